"""`agentxds registry list|show|add|remove`: register A2A agents and MCP servers at run time (over HTTP).

`add FILE` reads a registration (YAML or JSON; controlplane/registry.py):

    name: weather
    kind: A2AAgent
    cardUrl: http://10.0.0.9:8000/.well-known/agent-card.json   # or card: {...}
    rules: [{agents: [triage], skills: ["*"]}]

`cardUrl` is read here and sent as the card. The token comes from
--token-file or $AGENTXDS_REGISTRY_TOKEN. Exit 0: done; 3: held for an
operator's approval (drift); 1: refused (the answer says why); 2: the API
could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from xds_server.cli.common import Subparsers

DEFAULT_URL = "http://127.0.0.1:18005"


def _request(url: str, token: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, {"error": raw.decode("utf-8", "replace")}


def _registration(file: Path) -> tuple[str, dict[str, Any]]:
    """(name, the API's body) from a registration file; the card fetched when it names `cardUrl`."""
    data = yaml.safe_load(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise SystemExit(f"agentxds registry add: {file} must be a mapping with a name")
    body = {k: v for k, v in data.items() if k not in ("name", "cardUrl")}
    if "cardUrl" in data:
        if not str(data["cardUrl"]).startswith(("http://", "https://")):
            raise SystemExit(f"agentxds registry add: cardUrl must be an http(s) URL, not {data['cardUrl']!r}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(str(data["cardUrl"]), timeout=10) as response:
                body["card"] = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"agentxds registry add: cannot read the card at {data['cardUrl']}: {exc}") from None
    return data["name"], body


def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        return str(args.token_file.read_text(encoding="utf-8").strip())
    token = os.environ.get("AGENTXDS_REGISTRY_TOKEN", "").strip()
    if not token:
        raise SystemExit("agentxds registry: give the registry API's token (--token-file FILE or "
                         "$AGENTXDS_REGISTRY_TOKEN)")  # fmt: skip
    return token


def cmd_registry(args: argparse.Namespace) -> int:
    base, token = args.url.rstrip("/") + "/registry", _token(args)
    try:
        if args.action == "list":
            status, body = _request(base, token)
        elif args.action == "add":
            if not args.target:
                print("agentxds registry add: give the registration file", file=sys.stderr)
                return 2
            name, registration = _registration(Path(args.target))
            status, body = _request(f"{base}/{name}", token, "PUT", registration)
        else:
            if not args.target:
                print(f"agentxds registry {args.action}: give the name", file=sys.stderr)
                return 2
            status, body = _request(f"{base}/{args.target}", token, "DELETE" if args.action == "remove" else "GET")
    except (urllib.error.URLError, OSError) as exc:
        print(f"agentxds registry: cannot reach {args.url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 2
    print(json.dumps(body, indent=2, sort_keys=True))
    if status == 202:  # held for an operator's approval: not served yet
        return 3
    return 0 if status < 300 else 1


def register(sub: Subparsers) -> None:
    registry = sub.add_parser("registry", help="register, list or remove A2A agents and MCP servers at run time")
    registry.add_argument("action", choices=("list", "show", "add", "remove"))
    registry.add_argument("target", nargs="?", type=str, help="add: the registration file; show/remove: the name")
    registry.add_argument("--url", default=DEFAULT_URL, help=f"the registry API (default {DEFAULT_URL})")
    registry.add_argument("--token-file", type=Path, default=None, help="the API's bearer token "
                          "(default: $AGENTXDS_REGISTRY_TOKEN)")  # fmt: skip
    registry.set_defaults(func=cmd_registry)
