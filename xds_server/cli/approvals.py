"""`agentxds approvals list|show|approve|deny`: the operator's side of approvals (over HTTP)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from xds_server.cli.common import Subparsers


def _request(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
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
    args = json.dumps(a.get("arguments", {}), sort_keys=True)
    return (f"{a['id']}  {a['state']:<8}  {a['backend']}/{a['tool']} {args}  agent={a['agent']}  "
            f"rule={a['rule']}  expires {_when(a.get('expires_at'))}")  # fmt: skip


def run_approvals(base_url: str, action: str, approval_id: str | None, *, by: str | None, include_done: bool) -> int:
    base = base_url.rstrip("/")
    try:
        if action == "list":
            status, body = _request(f"{base}/approvals" + ("?all=1" if include_done else ""))
            approvals = body.get("approvals", []) if isinstance(body, dict) else []
            if not approvals:
                print("no approvals waiting")
            for a in approvals:
                print(format_approval(a))
            return 0 if status == 200 else 1
        if not approval_id:
            print(f"agentxds approvals {action}: give the approval id", file=sys.stderr)
            return 2
        if action == "show":
            status, body = _request(f"{base}/approvals/{approval_id}")
        else:
            status, body = _request(f"{base}/approvals/{approval_id}/{action}", "POST", {"by": by or getpass.getuser()})
    except (urllib.error.URLError, OSError) as exc:
        print(f"agentxds approvals: cannot reach {base}: {exc}", file=sys.stderr)
        return 2
    if status != 200:
        print(f"agentxds approvals {action}: {body.get('error') if isinstance(body, dict) else body}", file=sys.stderr)
        return 1
    print(format_approval(body))
    return 0


def cmd_approvals(args: argparse.Namespace) -> int:
    return run_approvals(args.url, args.action, args.id, by=args.by, include_done=args.all)


def register(sub: Subparsers) -> None:
    approvals = sub.add_parser("approvals", help="list, approve or deny calls waiting for an operator")
    approvals.add_argument("action", choices=("list", "show", "approve", "deny"))
    approvals.add_argument("id", nargs="?", help="approval id (from the JSON-RPC error's data.approvalId)")
    approvals.add_argument("--url", default="http://127.0.0.1:18002", help="the policy service's approvals API")
    approvals.add_argument("--by", default=None, help="who decides (default: $USER)")
    approvals.add_argument("--all", action="store_true", help="list: include decided and used approvals")
    approvals.set_defaults(func=cmd_approvals)
