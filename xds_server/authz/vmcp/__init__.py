"""Virtual MCP servers in the policy service: what needs every member of a virtual server.

    naming.py    members' lists -> the names clients see (prefixes, conflicts, curation), and back
    upstream.py  JSON-RPC to one member over HTTP, in the revision it speaks (legacy sessions opened here)
    sessions.py  a legacy client's session id: the members' session ids, sealed (no store)
    front.py     the MCP endpoint Envoy passes a virtual server's other requests to (fan-out, bridging)

Envoy routes a 2026-07-28 client's prefixed calls to stateless members itself
(translate/virtual_mcp.py); everything else of a virtual server comes here,
on the policy service's HTTP port at `/vmcp/<gateway>/<server>`.
"""
