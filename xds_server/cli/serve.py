"""`agentxds serve DIR`: the control plane and the policy service, for a fleet of Envoys or docker compose."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xds_server.cli.common import DEFAULT_XDS_PORT, Subparsers, add_allow_emptying, add_state_dir, policy_dir

APPROVALS_TOKEN_ENV = "AGENTXDS_APPROVALS_TOKEN"

if TYPE_CHECKING:
    from xds_server.authz.server_tls import ServerTls
    from xds_server.controlplane.service import ControlPlane


def cmd_serve(args: argparse.Namespace) -> int:
    from xds_server.authz.server_tls import ServerTlsError
    from xds_server.controlplane.runtime_endpoints import ApiEndpoints, RuntimeEndpoints
    from xds_server.controlplane.service import ControlPlane
    from xds_server.runtime.state_dir import StateDir
    from xds_server.sources.registry import Registry, RegistryStore
    from xds_server.sources.shared_registry import SharedRegistryStore

    tls = _server_tls(args)
    state = StateDir.at(args.state_dir).ensure()
    serve_ads = args.role in ("all", "xds")
    with_policy_service = args.role in ("all", "policy")
    approvals_token = _approvals_token(args) if with_policy_service else None

    token = _token(args.endpoints_port, args.endpoints_token_file, "AGENTXDS_ENDPOINTS_TOKEN", "--endpoints")
    registry_token = _token(args.registry_port, args.registry_token_file, "AGENTXDS_REGISTRY_TOKEN", "--registry")
    if args.state_store:
        from xds_server.authz.shared_state import check_url

        try:
            check_url(args.state_store)
        except ValueError as exc:
            raise SystemExit(f"agentxds serve: --state-store (or $AGENTXDS_STATE_STORE) {exc}") from None
    runtime = RuntimeEndpoints(args.endpoints_file, ApiEndpoints(state.runtime_endpoints))
    # With a state store, registrations are the fleet's: every control plane on it serves them (the API
    # may run on any). Else they are this one's, in its state directory, served while its API is.
    registry: Registry | None = None
    if args.state_store:
        registry = SharedRegistryStore(args.state_store)
    elif args.registry_port >= 0:
        registry = RegistryStore(state.registry_db)

    async def serve() -> int:
        control = ControlPlane(args.dir, host=args.host, port=args.port, serve_ads=serve_ads,
                               allow_emptying=args.allow_emptying, approvals_db=state.approvals_db,
                               sealing_key_file=state.sealing_key,
                               coverage_file=state.published_coverage(args.dir), runtime=runtime,
                               registry=registry)  # fmt: skip
        if with_policy_service:
            control.add_policy_service(args.host, args.policy_port, args.approvals_port,
                                       args.authz_http_port if args.authz_http_port >= 0 else None,
                                       state_store=args.state_store or None, tls=tls,
                                       approvals_host=args.approvals_host, approvals_token=approvals_token)  # fmt: skip
        try:
            await control.start()
        except ServerTlsError as exc:
            raise SystemExit(f"agentxds serve: policy service TLS: {exc}") from None
        if args.endpoints_port >= 0:
            await control.serve_endpoints_api(args.endpoints_host, args.endpoints_port, token)
        if args.registry_port >= 0:
            await control.serve_registry_api(args.registry_host, args.registry_port, registry_token,
                                             _networks(args.registry_networks))  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(_banner(args, control, state.approvals_db), flush=True)
        await stop.wait()
        await control.stop()
        return 0

    return asyncio.run(serve())


def _env_path(variable: str) -> Path | None:
    value = os.environ.get(variable, "").strip()
    return Path(value) if value else None


def _server_tls(args: argparse.Namespace) -> ServerTls | None:
    """The policy service's TLS from --policy-tls-*, or None (exits when they do not go together)."""
    from xds_server.authz.server_tls import ServerTls

    cert, key, client_ca = args.policy_tls_cert, args.policy_tls_key, args.policy_tls_client_ca
    if cert is None and key is None and client_ca is None:
        return None
    if cert is None or key is None:
        raise SystemExit("agentxds serve: --policy-tls-cert and --policy-tls-key go together "
                         "(--policy-tls-client-ca needs both)")  # fmt: skip
    if args.role == "xds":
        raise SystemExit("agentxds serve: --policy-tls-* (or $AGENTXDS_POLICY_TLS_*) are for the policy service "
                         "(--role all or policy); unset them for --role xds")  # fmt: skip
    # Absolute, not resolved: a Kubernetes Secret volume swaps a symlink to a new directory on renewal.
    return ServerTls(cert.absolute(), key.absolute(), client_ca.absolute() if client_ca is not None else None)


def _approvals_token(args: argparse.Namespace) -> str | None:
    """The approvals API's bearer token (--approvals-token-file, else $AGENTXDS_APPROVALS_TOKEN), or None;
    exits when it is too short, or missing while the API listens beyond loopback."""
    import ipaddress

    token = _read_token(args.approvals_token_file, APPROVALS_TOKEN_ENV, "--approvals-token-file")
    try:
        loopback = args.approvals_host == "localhost" or ipaddress.ip_address(args.approvals_host).is_loopback
    except ValueError:
        loopback = False
    if not token:
        if loopback:
            return None
        raise SystemExit(f"agentxds serve: the approvals API on {args.approvals_host} (--approvals-host) needs a "
                         f"token: whoever can approve lets a held call through (--approvals-token-file FILE or "
                         f"${APPROVALS_TOKEN_ENV}, at least 16 characters)")  # fmt: skip
    if len(token) < 16:
        raise SystemExit(f"agentxds serve: the approvals token needs at least 16 characters "
                         f"(--approvals-token-file FILE or ${APPROVALS_TOKEN_ENV})")  # fmt: skip
    return token


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _networks(text: str) -> list[Any]:
    """The CIDRs of --registry-networks (exits on a bad one)."""
    import ipaddress

    try:
        return [ipaddress.ip_network(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise SystemExit(f"agentxds serve: --registry-networks: {exc}") from None


def _token(port: int, file: Path | None, variable: str, flag: str) -> str:
    """An operator API's bearer token (from `file`, else $`variable`); exits when the API is asked
    for (`port` >= 0) without one."""
    if port < 0:
        return ""
    token = _read_token(file, variable, f"{flag}-token-file")
    if len(token) < 16:
        raise SystemExit(f"agentxds serve: {flag}-port needs a token of at least 16 characters "
                         f"({flag}-token-file FILE or ${variable})")  # fmt: skip
    return token


def _read_token(file: Path | None, variable: str, option: str) -> str:
    """A bearer token from `file`, else $`variable` ("" if neither); exits when the file cannot be read."""
    try:
        return (file.read_text(encoding="utf-8") if file is not None else os.environ.get(variable, "")).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"agentxds serve: {option} {file}: {exc}") from None


def _banner(args: argparse.Namespace, control: ControlPlane, approvals_db: Path) -> str:
    parts = []
    if args.role in ("all", "xds"):
        parts.append(f"ADS on {args.host}:{control.port}")
    service = control.policy_service
    if service is not None:
        http = f" (ext_authz over HTTP on {service.authz_http_port})" if service.authz_http_port is not None else ""
        if service.tls is not None:
            http += f" over {service.tls.describe()}"
        parts.append(f"policy service on {args.host}:{service.port}{http}, approvals on "
                     f"http://{_url_host(args.approvals_host)}:{service.approvals_port}"
                     f"{' (token required)' if service.approvals_token else ''} (kept in {approvals_db}), decision state "
                     f"{service.state.describe()}")  # fmt: skip
    if control.endpoints_port is not None:
        parts.append(f"endpoints API on http://{args.endpoints_host}:{control.endpoints_port}")
    if args.endpoints_file is not None:
        parts.append(f"endpoints file {args.endpoints_file}")
    if control.registry_port is not None:
        parts.append(f"registry API on http://{args.registry_host}:{control.registry_port}")
    return f"agentxds control plane ({args.role}): {', '.join(parts)}, policies {args.dir}"


def register(sub: Subparsers) -> None:
    serve = sub.add_parser("serve", help="control plane only (for a fleet of Envoys or docker compose)")
    serve.add_argument("dir", type=policy_dir)
    serve.add_argument(
        "--role",
        choices=("all", "xds", "policy"),
        default="all",
        help="all: ADS and the policy service in one process (default); xds: ADS only; policy: the policy "
        "service only (run it apart so it keeps deciding while the ADS process restarts, or several of it)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to serve ADS on (0.0.0.0 in a container)")
    serve.add_argument("--port", type=int, default=DEFAULT_XDS_PORT, help="ADS and status API port (default 18000)")
    serve.add_argument("--policy-port", type=int, default=18001, help="policy service gRPC port (default 18001)")
    serve.add_argument("--approvals-port", type=int, default=18002, help="approvals HTTP API port (default 18002)")
    serve.add_argument("--approvals-host", default="127.0.0.1",
                       help="address of the approvals API (default 127.0.0.1, whatever --host is: whoever can "
                       "approve lets a held call through; elsewhere it needs a token)")  # fmt: skip
    serve.add_argument("--approvals-token-file", type=Path, default=None, metavar="FILE",
                       help=f"the approvals API's bearer token (default: ${APPROVALS_TOKEN_ENV}; required when "
                       "--approvals-host is not loopback)")  # fmt: skip
    serve.add_argument(
        "--authz-http-port",
        type=int,
        default=18003,
        help="ext_authz over HTTP, for gateways with policyService.extAuthz: http (default 18003; -1: off)",
    )
    serve.add_argument(
        "--state-store",
        default=os.environ.get("AGENTXDS_STATE_STORE", ""),
        metavar="URL",
        help="Valkey/Redis server keeping the quotas and approvals, shared by every policy-service replica given "
        "the same URL (redis://[:PASSWORD@]HOST:PORT/DB, rediss://, valkey://, unix://; default "
        "$AGENTXDS_STATE_STORE, else in this process). Calls under a quota or needing an approval are refused "
        "while it cannot be reached",
    )
    serve.add_argument("--policy-tls-cert", type=Path, default=_env_path("AGENTXDS_POLICY_TLS_CERT"), metavar="FILE",
                       help="serve the policy service's decision ports (gRPC and HTTP; not approvals) over TLS with "
                       "this PEM certificate (default $AGENTXDS_POLICY_TLS_CERT); Envoy's side: the Gateway's "
                       "policyService.tls")  # fmt: skip
    serve.add_argument("--policy-tls-key", type=Path, default=_env_path("AGENTXDS_POLICY_TLS_KEY"), metavar="FILE",
                       help="its private key (default $AGENTXDS_POLICY_TLS_KEY)")  # fmt: skip
    serve.add_argument("--policy-tls-client-ca", type=Path, default=_env_path("AGENTXDS_POLICY_TLS_CLIENT_CA"),
                       metavar="FILE", help="require a client certificate signed by these PEM CAs (mTLS: Envoy "
                       "presents policyService.tls.certificateFile; default $AGENTXDS_POLICY_TLS_CLIENT_CA)")  # fmt: skip
    serve.add_argument("--endpoints-file", type=Path, default=None, metavar="FILE",
                       help="follow FILE (YAML: endpoints: {BACKEND: [{host: IP, port: N}]}) for the endpoints of "
                       "backends with runtimeEndpoints: true")  # fmt: skip
    serve.add_argument("--endpoints-port", type=int, default=-1, metavar="PORT",
                       help="serve the endpoints API on PORT (default -1: off; needs a token)")  # fmt: skip
    serve.add_argument("--endpoints-host", default="127.0.0.1",
                       help="address of the endpoints API (default 127.0.0.1: whoever holds its token can point a "
                       "backend anywhere, as a policy commit could)")  # fmt: skip
    serve.add_argument("--endpoints-token-file", type=Path, default=None, metavar="FILE",
                       help="the endpoints API's bearer token (default: $AGENTXDS_ENDPOINTS_TOKEN)")  # fmt: skip
    serve.add_argument("--registry-port", type=int, default=-1, metavar="PORT",
                       help="serve the registry API on PORT (A2A agents and MCP servers registered at run time, "
                       "kept in the state directory; default -1: off, and registrations are not served; needs a "
                       "token)")  # fmt: skip
    serve.add_argument("--registry-host", default="127.0.0.1", help="address of the registry API (default 127.0.0.1)")
    serve.add_argument("--registry-networks", default="10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7",
                       metavar="CIDR,...", help="where registered agents and MCP servers may be (IP addresses in "
                       "these networks; default: the private ones; loopback and link-local only if listed)")  # fmt: skip
    serve.add_argument("--registry-token-file", type=Path, default=None, metavar="FILE",
                       help="the registry API's bearer token (default: $AGENTXDS_REGISTRY_TOKEN)")  # fmt: skip
    add_allow_emptying(serve)
    add_state_dir(serve)
    serve.set_defaults(func=cmd_serve)
