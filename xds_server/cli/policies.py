"""`agentxds validate DIR` and `agentxds render DIR --to ir|xds|paths`: the policy directory, checked or shown."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from xds_server.cli.common import Subparsers, policy_dir

INTERNAL_ERROR = 3


def _internal_error(command: str) -> int:
    """A failure of the gateway itself (not of the policies): the stack, and exit code 3."""
    traceback.print_exc()
    print(f"agentxds {command}: internal error while building the configuration: a bug of agentxds, not a "
          "problem in your policies (the stack is above)", file=sys.stderr)  # fmt: skip
    return INTERNAL_ERROR


def cmd_validate(args: argparse.Namespace) -> int:
    from xds_server.controlplane import emptying
    from xds_server.controlplane.pipeline import as_source, translate_checked
    from xds_server.ir.build import build_ir
    from xds_server.policy.diagnostics import PolicyError

    try:
        policy_set = as_source(args.dir).load()
        ir = build_ir(policy_set)
        translate_checked(ir)
        warnings = emptying.warnings(emptying.Coverage.of(policy_set, ir))
    except PolicyError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        print(f"{len(exc.diagnostics)} error(s) in {args.dir}", file=sys.stderr)
        return 1
    except Exception:
        return _internal_error("validate")
    for gateway in ir.gateways:
        agents = sum(1 for a in gateway.agents if a.principals)
        grants = sum(len(r.grants) for r in gateway.routes)
        print(f"gateway {gateway.name}: {len(gateway.routes)} backend(s), {agents} agent(s), {grants} grant(s)")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"OK: {args.dir} is valid" + (f" ({len(warnings)} warning(s))" if warnings else ""))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from xds_server.controlplane.pipeline import as_source, translate_checked
    from xds_server.controlplane.render import dump_yaml, ir_document, write_xds_yaml
    from xds_server.ir.build import build_ir
    from xds_server.policy.diagnostics import PolicyError

    try:
        ir = build_ir(as_source(args.dir).load())
        if args.to == "ir":  # the IR alone needs no translation: shown even when a translator fails
            sys.stdout.write(dump_yaml(ir_document(ir)))
            return 0
        if args.to == "paths":
            from xds_server.controlplane.paths import paths_text

            sys.stdout.write(paths_text(ir))
            return 0
        resources = translate_checked(ir)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception:
        return _internal_error("render")
    try:
        write_xds_yaml(resources, sys.stdout.write)
        sys.stdout.flush()
    except BrokenPipeError:  # `render ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit flush is quiet too
    return 0


def register(sub: Subparsers) -> None:
    validate = sub.add_parser("validate", help="check a policy directory; non-zero exit on errors")
    validate.add_argument("dir", type=policy_dir)
    validate.set_defaults(func=cmd_validate)

    render = sub.add_parser("render", help="print what Envoy would receive, or where each rule is decided")
    render.add_argument("dir", type=policy_dir)
    render.add_argument("--to", choices=("ir", "xds", "paths"), default="xds",
                        help="xds: the resources Envoy receives; ir: the resolved policies; paths: for each rule, "
                        "whether Envoy decides it alone or the policy service does, and why")  # fmt: skip
    render.set_defaults(func=cmd_render)
