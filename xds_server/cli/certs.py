"""`agentxds certs DIR`: write a development CA, the gateway's certificate and SPIFFE agent certificates."""

from __future__ import annotations

import argparse
import sys

from xds_server.cli.common import Subparsers, policy_dir


def cmd_certs(args: argparse.Namespace) -> int:
    from xds_server.cli.pki import policy_snippet, write_dev_pki

    try:
        pki = write_dev_pki(args.dir, trust_domain=args.trust_domain, agents=args.agent or [],
                            gateway_hosts=args.gateway_host or [], gateway_ips=args.gateway_ip or [],
                            days=args.days, new_ca=args.new_ca)  # fmt: skip
    except (ValueError, OSError) as exc:
        print(f"agentxds certs: {exc}", file=sys.stderr)
        return 1
    rows = [("CA (reused)" if pki.ca_reused else "CA (new)", pki.ca_cert, pki.ca_key, ""),
            ("gateway", pki.gateway_cert, pki.gateway_key, "")]  # fmt: skip
    rows += [(f"agent {name}", cert, key, sid) for name, (sid, cert, key) in sorted(pki.agents.items())]
    width = max(len(r[0]) for r in rows)
    for label, cert, key, sid in rows:
        print(f"{label:<{width}}  {cert}  (key {key.name}, mode 0600)  {sid}".rstrip())
    print(
        f"\nLeaf certificates are valid for {args.days} day(s). Re-run to renew: the CA is kept (--new-ca replaces it),"
    )
    print("and a running gateway picks up rewritten files without a restart.\n")
    sys.stdout.write(policy_snippet(pki))
    return 0


def register(sub: Subparsers) -> None:
    certs = sub.add_parser("certs", help="write a development CA, gateway certificate and SPIFFE agent certificates")
    certs.add_argument("dir", type=policy_dir, help="where to write ca.crt, gateway.crt and agents/<name>.crt (+ keys)")
    certs.add_argument("--trust-domain", required=True, help="SPIFFE trust domain, e.g. example.org")
    certs.add_argument("--agent", action="append", metavar="NAME",
                       help="an agent certificate for spiffe://<trust-domain>/agent/NAME (repeatable)")  # fmt: skip
    certs.add_argument("--gateway-host", action="append", metavar="DNS",
                       help="another DNS name for the gateway certificate (localhost is always in it; repeatable)")  # fmt: skip
    certs.add_argument("--gateway-ip", action="append", metavar="IP",
                       help="another IP address for the gateway certificate (127.0.0.1 is always in it; repeatable)")  # fmt: skip
    certs.add_argument(
        "--days", type=int, default=30, help="validity of the gateway and agent certificates (default 30)"
    )
    certs.add_argument(
        "--new-ca", action="store_true", help="replace an existing CA (default: reuse DIR/ca.crt and ca.key)"
    )
    certs.set_defaults(func=cmd_certs)
