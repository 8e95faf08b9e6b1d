"""`agentxds approvals list|show|approve|deny`: the operator's side of approvals (over HTTP)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xds_server.cli.common import Subparsers, add_state_dir

DEFAULT_URL = "http://127.0.0.1:18002"
TOKEN_ENV = "AGENTXDS_APPROVALS_TOKEN"  # as `agentxds serve` reads it


def _request(url: str, method: str = "GET", body: dict[str, Any] | None = None,
             token: str | None = None) -> tuple[int, Any]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _when(value: Any) -> str:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def format_approval(a: dict[str, Any]) -> str:
    """One line per approval: id, state, the call, who asked, and what happened to it when."""
    args = json.dumps(a.get("arguments", {}), sort_keys=True)
    user = f"  user={a['user']}" if a.get("user") else ""
    return (f"{a['id']}  {a['state']:<8}  {a['backend']}/{a['tool']} {args}  agent={a['agent']}{user}  "
            f"rule={a['rule']}  {_history(a)}")  # fmt: skip


def _history(a: dict[str, Any]) -> str:
    decided = f"decided by {a.get('decided_by')} at {_when(a.get('decided_at'))}" if a.get("decided_by") else ""
    state = a.get("state")
    if state == "pending":
        return f"asked at {_when(a.get('created_at'))}, expires {_when(a.get('expires_at'))}"
    if state == "approved":
        return f"{decided}, valid until {_when(a.get('expires_at'))}"
    if state == "used":
        return f"{decided}, used at {_when(a.get('used_at'))}"
    if state == "denied":
        return f"{decided}, stands until {_when(a.get('expires_at'))}"
    return f"expired at {_when(a.get('expires_at'))}" + (f" ({decided})" if decided else "")


def run_approvals(
    base_url: str,
    action: str,
    approval_id: str | None,
    *,
    by: str | None,
    include_done: bool,
    source: str = "",
    token: str | None = None,
) -> int:
    """Do `action` against the approvals API at `base_url` (with its bearer `token`, if it has one)."""
    base = base_url.rstrip("/")
    try:
        if action == "list":
            status, body = _request(f"{base}/approvals" + ("?all=1" if include_done else ""), token=token)
            if status != 200:  # say why, not "none waiting": the store may be unreachable
                print(f"agentxds approvals list: {body.get('error') if isinstance(body, dict) else body}",
                      file=sys.stderr)  # fmt: skip
                return 1
            approvals = body.get("approvals", []) if isinstance(body, dict) else []
            if not approvals:
                print("no approvals recorded" if include_done else "no approvals waiting")
            for a in approvals:
                print(format_approval(a))
            return 0
        if not approval_id:
            print(f"agentxds approvals {action}: give the approval id", file=sys.stderr)
            return 2
        if action == "show":
            status, body = _request(f"{base}/approvals/{approval_id}", token=token)
        else:
            status, body = _request(f"{base}/approvals/{approval_id}/{action}", "POST", {"by": by or getpass.getuser()},
                                    token)  # fmt: skip
    except (urllib.error.URLError, OSError) as exc:
        where = f" ({source})" if source else ""
        print(f"agentxds approvals: cannot reach {base}{where}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 2
    if status != 200:
        print(f"agentxds approvals {action}: {body.get('error') if isinstance(body, dict) else body}", file=sys.stderr)
        return 1
    print(format_approval(body))
    return 0


def cmd_approvals(args: argparse.Namespace) -> int:
    from xds_server.cli.up_record import locate

    url, source = locate(args.state_dir, args.url, "approvals_url", DEFAULT_URL)
    try:
        token = args.token_file.read_text(encoding="utf-8") if args.token_file else os.environ.get(TOKEN_ENV)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"agentxds approvals: --token-file {args.token_file}: {exc}", file=sys.stderr)
        return 2
    return run_approvals(url, args.action, args.id, by=args.by, include_done=args.all, source=source,
                         token=(token or "").strip() or None)  # fmt: skip


def register(sub: Subparsers) -> None:
    approvals = sub.add_parser("approvals", help="list, approve or deny calls waiting for an operator")
    approvals.add_argument("action", choices=("list", "show", "approve", "deny"))
    approvals.add_argument("id", nargs="?", help="approval id (from the JSON-RPC error's data.approvalId)")
    approvals.add_argument(
        "--url",
        default=None,
        help=f"the policy service's approvals API (default: the running `agentxds up`'s, else {DEFAULT_URL})",
    )
    approvals.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                           help=f"the approvals API's bearer token, where it has one (default: ${TOKEN_ENV})")  # fmt: skip
    add_state_dir(approvals)
    approvals.add_argument("--by", default=None, help="who decides (default: $USER)")
    approvals.add_argument("--all", action="store_true", help="list: include decided and used approvals")
    approvals.set_defaults(func=cmd_approvals)
