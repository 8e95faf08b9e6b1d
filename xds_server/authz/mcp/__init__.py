"""MCP-specific decisions of the policy service: list rewriting per caller, the tool guard
(pinning and screening of tool descriptions) and reading a backend's tools for `agentxds pin`."""
