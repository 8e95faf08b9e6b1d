"""End to end: a bounded soak. SDK clients of both revisions call allowed tools at a fixed pace for
about a minute while every abuser of tests/e2e/abusers.py hammers the same listener beside them
(slowloris, trickled bodies, header floods, ambiguous identities, unknown agents, denied tools,
malformed HTTP, deep JSON, oversized bodies, garbage, connection churn).

Not one allowed call fails, each abuser is answered only as the gateway's limits say, and the
backend never sees an abusive request. Memory and the served rate under abuse are measured by
bench/soak.py, not here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from tests.e2e.abusers import ABUSERS, MARKER, Tally, start_abusers, unexpected
from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, launch, stop_gateway, write_policies
from tests.e2e.load import MODES, SteadyLoad
from xds_server.runtime.ports import free_port

ROUNDS = 400  # per client; at INTERVAL_S apart and two calls a round, about a minute
INTERVAL_S = 0.1
CALLS = [("list_issues", {"repo": "acme/web"}), ("whoami", {})]
LIMITS = "requestHeadersTimeout: 1s, requestReceiveTimeout: 2s, connectionIdleTimeout: 5s, maxHeaders: 60"


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(mcp_backend_factory: Any, tmp_path: Any) -> AsyncIterator[RunningGateway]:
    backends = {"github": mcp_backend_factory(name="github")}
    listen_port, policy_port = free_port(), free_port()
    policy_dir = tmp_path / "policies"
    write_policies(policy_dir, listen_port, backends, policy_port=policy_port, extra_limits=LIMITS)
    control, envoy = await launch(policy_dir, tmp_path, listen_port, policy_port)
    gw = RunningGateway(policy_dir, control, envoy, listen_port, backends)
    yield gw
    await stop_gateway(gw)


async def test_allowed_calls_never_fail_while_abusers_run_beside_them(gateway: RunningGateway) -> None:
    load = SteadyLoad(gateway.url(), {IDENTITY_HEADER: "triage"}, CALLS, interval_s=INTERVAL_S, rounds=ROUNDS)
    tally, stop = Tally(), asyncio.Event()
    abusers = start_abusers(gateway.listen_port, stop, tally, agent_header=IDENTITY_HEADER, agent="triage")
    load.start()
    try:
        await load.finished()
    finally:
        stop.set()
        await asyncio.gather(*abusers)
    assert not load.failures(), load.failures()[:5]
    assert load.per_mode() == {mode: ROUNDS * len(CALLS) for mode in MODES}
    assert unexpected(tally) == {}, dict(tally.outcomes)
    thin = {name: tally.attempts(name) for name in ABUSERS if tally.attempts(name) < 10}
    assert not thin, f"abusers that hardly ran: {thin}"
    reached = [r for r in gateway.backends["github"].requests() if MARKER in (r["body"] or "")]
    assert reached == [], reached[:3]
    polite = [json.loads(r["body"]) for r in gateway.backends["github"].requests() if r["body"]]
    assert sum(1 for b in polite if b.get("method") == "tools/call") == len(MODES) * ROUNDS * len(CALLS)
    print("abusers:", {name: dict(c) for name, c in sorted(tally.outcomes.items())})
