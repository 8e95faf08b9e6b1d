"""The policy service: decisions Envoy cannot make natively.

    decide.py      the generic pipeline: caller → call → protocol refusals → rules → credentials
    engine.py      conditions (CEL), quotas and approvals over a route's conditional rules (pure steps)
    effects.py     what those steps ask of the decision state, and the local state (memory, SQLite)
    shared_state.py, shared_approvals.py   the decision state in Valkey/Redis, shared by replicas
    credentials.py delegated credentials (token exchange, per-user secrets)
    protocols.py   what a protocol's handler provides; mcp/ is MCP's (tools/call, tool guard, lists)
    state.py       the IR indexed per route; callers recognised by ir/principals.py
    ext_authz.py, ext_authz_http.py, ext_proc.py, approvals_http.py   thin adapters
    server_tls.py  TLS on the decision ports (its certificate followed as files change)
    upstream_tls.py   the service as a TLS client of upstreams the IR names (members, a front)
    service.py     runs them all and follows each published IR

It reads the IR and `core` only: never policy models, never the translators.
"""
