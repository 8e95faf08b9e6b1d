"""The intermediate representation between policies and Envoy (see types.py for its shape).

types.py       the neutral IR: gateway → listener → routes, grants, rules, decision needs
principals.py  each identity source's RBAC principal and Python check
mcp.py         MCP's parts (route part, what a grant allows, tool guard)
parts.py       the unions of every protocol's parts
build.py       PolicySet → IR (with build_mcp.py, routes.py; files and secrets: materials.py)
load.py        the IR read back from its YAML
"""
