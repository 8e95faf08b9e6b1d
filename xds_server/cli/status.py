"""`agentxds status`: fetch the control plane's status over gRPC and print it for humans.

    resp = fetch_status("127.0.0.1:18000", timeout=5.0)   # raises StatusUnavailable
    print(format_status(resp), end="")
    sys.exit(status_exit_code(resp))                       # 0 healthy, 1 not

Health: a control plane is healthy when the last policy build had no errors
and no Envoy is refusing the configuration it was last sent. A NACK is "in
effect" while the rejected version is still the last one sent to that node
for that type and the node has not accepted it; once a good configuration is
sent and ACKed, the old NACK is still shown (as resolved) but no longer makes
the status unhealthy. Exit code 2 (unreachable) is the CLI's business.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable

import grpc
from google.protobuf import timestamp_pb2

from xds_server.api.agentxds.v1 import status_pb2, status_pb2_grpc
from xds_server.cli.common import DEFAULT_XDS_PORT, Subparsers, add_state_dir

#: Envoy's error texts can be whole config dumps; this much is plenty to act on.
MAX_ERROR_CHARS = 500

_PREFIX = "type.googleapis.com/"
_SHORT_NAMES = {
    _PREFIX + "envoy.config.cluster.v3.Cluster": "CDS",
    _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment": "EDS",
    _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret": "SDS",
    _PREFIX + "envoy.config.core.v3.TypedExtensionConfig": "ECDS",
    _PREFIX + "envoy.config.listener.v3.Listener": "LDS",
    _PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration": "SRDS",
    _PREFIX + "envoy.config.route.v3.RouteConfiguration": "RDS",
}
_TYPE_ORDER = {name: i for i, name in enumerate(("CDS", "EDS", "SDS", "ECDS", "LDS", "SRDS", "RDS"))}


class StatusUnavailable(ConnectionError):
    """The control plane could not be reached or did not answer in time."""


def fetch_status(target: str, timeout: float = 5.0) -> status_pb2.GetStatusResponse:
    """Call `agentxds.v1.Status/GetStatus` on `target` ("host:port"), blocking.

    Uses a synchronous channel, so it is safe to call with or without a
    running event loop (never from a coroutine serving that same control
    plane: it would block the loop that has to answer). Raises
    StatusUnavailable with gRPC's code and details on any RPC failure.
    """
    with grpc.insecure_channel(target) as channel:
        stub = status_pb2_grpc.StatusStub(channel)
        try:
            return stub.GetStatus(status_pb2.GetStatusRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if code is not None else "ERROR"
            raise StatusUnavailable(f"{name}: {details}") from None


# -- health -------------------------------------------------------------------


def short_type(type_url: str) -> str:
    """CDS/EDS/SDS/LDS/RDS for the xDS types served, else the message name."""
    return _SHORT_NAMES.get(type_url) or type_url.removeprefix(_PREFIX).rsplit(".", 1)[-1]


def nack_in_effect(ts: status_pb2.TypeStatus) -> bool:
    """True while the last version sent for this type is one the node rejected."""
    return ts.HasField("last_nack") and ts.last_nack.version == ts.sent_version and ts.acked_version != ts.sent_version


def active_nacks(resp: status_pb2.GetStatusResponse) -> list[tuple[status_pb2.NodeStatus, status_pb2.TypeStatus]]:
    """(node, type) pairs whose NACK is in effect, in report order."""
    return [(node, ts) for node in resp.nodes for ts in _sorted_types(node.types) if nack_in_effect(ts)]


def status_exit_code(resp: status_pb2.GetStatusResponse) -> int:
    """0 when healthy, 1 with policy errors, an internal error or a NACK in effect."""
    return 1 if resp.policy_errors or resp.internal_errors or active_nacks(resp) else 0


# -- formatting ---------------------------------------------------------------


def _sorted_types(types: Iterable[status_pb2.TypeStatus]) -> list[status_pb2.TypeStatus]:
    return sorted(types, key=lambda t: (_TYPE_ORDER.get(short_type(t.type_url), len(_TYPE_ORDER)), t.type_url))


def _when(stamp: timestamp_pb2.Timestamp, now: float) -> str:
    """`2025-06-01 12:00:03Z (42s ago)`; `-` for an unset timestamp."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return "-"
    at = stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{at} ({_age(now - stamp.ToNanoseconds() / 1e9)})"


def _age(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    s = int(seconds)
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s ago"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m ago"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h ago"


def truncate(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def _indent(text: str, prefix: str) -> list[str]:
    return [(prefix + line).rstrip() for line in (text.splitlines() or [""])]


def _type_state(ts: status_pb2.TypeStatus) -> str:
    if nack_in_effect(ts):
        return "NACKED"
    if not ts.sent_version:
        return "not sent"
    if ts.acked_version == ts.sent_version:
        return "ok"
    return "waiting for ACK"


def _format_node(node: status_pb2.NodeStatus, now: float) -> list[str]:
    since = f"connected since {_when(node.connected_since, now)}" if node.connected else "DISCONNECTED"
    lines = [f"  {node.node_id}  group {node.group or '-'}  {since}"]
    types = _sorted_types(node.types)
    if not types:
        return [*lines, "    (no subscriptions yet)"]
    width = max([len("ACKED"), *(len(t.sent_version) for t in types), *(len(t.acked_version) for t in types)])
    lines.append(f"    TYPE  {'ACKED':<{width}}  {'SENT':<{width}}  STATE")
    for ts in types:
        acked, sent = ts.acked_version or "-", ts.sent_version or "-"
        lines.append(f"    {short_type(ts.type_url):<4}  {acked:<{width}}  {sent:<{width}}  {_type_state(ts)}")
    for ts in types:
        if not ts.HasField("last_nack"):
            continue
        nack = ts.last_nack
        label = "last NACK" if nack_in_effect(ts) else "last NACK (resolved: a later version was accepted)"
        lines.append(f"    {short_type(ts.type_url)} {label} at {_when(nack.time, now)}, version {nack.version}:")
        lines += _indent(truncate(nack.error_message), "      | ")
    if node.recent_nacks:
        lines.append(f"    recent NACKs from this node: {len(node.recent_nacks)}")
    return lines


def format_status(resp: status_pb2.GetStatusResponse, *, now: float | None = None) -> str:
    """A plain-text report, newline-terminated: policy errors first, then groups, nodes, summary.

    `now` (unix time) is only used for "N ago"; tests may pin it.
    """
    now = time.time() if now is None else now
    out: list[str] = []
    if resp.policy_errors:
        kept = "the last good configuration keeps serving" if resp.groups else "nothing is served yet"
        out.append(f"POLICY ERRORS ({len(resp.policy_errors)}): the last change was refused; {kept}")
        for err in resp.policy_errors:
            out += _indent(err, "  ! ")
        out.append("")
    if resp.internal_errors:
        kept = "the last good configuration keeps serving" if resp.groups else "nothing is served yet"
        out.append(f"INTERNAL ERROR: the gateway failed to build the configuration (a bug, not your policies); {kept}")
        for err in resp.internal_errors:
            out += _indent(err, "  ! ")
        out.append("")

    if resp.policy_warnings:
        out.append(f"WARNINGS ({len(resp.policy_warnings)}) about the configuration served:")
        for warning in resp.policy_warnings:
            out += _indent(warning, "  ~ ")
        out.append("")

    out.append("Groups (snapshot served):")
    if not resp.groups:
        out.append("  (none: nothing published yet)")
    for g in resp.groups:
        updated = f"  published {_when(g.updated_time, now)}" if g.HasField("updated_time") else ""
        out.append(f"  {g.group}  version {g.snapshot_version or '(empty)'}{updated}")
    out.append("")

    out.append(f"Nodes ({len(resp.nodes)}):")
    if not resp.nodes:
        out.append("  (no Envoy has connected yet)")
    for node in resp.nodes:
        out += _format_node(node, now)
    out.append("")

    problems = []
    if resp.policy_errors:
        problems.append(f"{len(resp.policy_errors)} policy error(s)")
    if resp.internal_errors:
        problems.append("internal error in the last build")
    active = active_nacks(resp)
    if active:
        which = ", ".join(f"{node.node_id} {short_type(ts.type_url)}" for node, ts in active)
        problems.append(f"{len(active)} NACK(s) in effect ({which})")
    out.append(f"UNHEALTHY: {'; '.join(problems)}" if problems else "healthy")
    return "\n".join(out) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    from xds_server.cli.up_record import locate

    target, source = locate(args.state_dir, args.xds, "xds", f"127.0.0.1:{DEFAULT_XDS_PORT}")
    try:
        status = fetch_status(target, timeout=args.timeout)
    except Exception as exc:  # grpc errors carry their own explanation
        print(f"agentxds status: cannot reach the control plane at {target} ({source}): {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    sys.stdout.write(format_status(status))
    return status_exit_code(status)  # 1: policy errors, an internal error or a NACK in effect


def register(sub: Subparsers) -> None:
    status = sub.add_parser("status", help="connected Envoys, versions, NACKs and policy errors")
    status.add_argument(
        "--xds",
        default=None,
        help=f"control plane address host:port (default: the running `agentxds up`, else 127.0.0.1:{DEFAULT_XDS_PORT})",
    )
    add_state_dir(status)
    status.add_argument("--timeout", type=float, default=5.0)
    status.set_defaults(func=cmd_status)
