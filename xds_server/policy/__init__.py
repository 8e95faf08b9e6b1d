"""Policy documents: strict models, the kinds registry, loading with file:line diagnostics.

kinds.py       every kind: model, references, provided names, unique keys
gateway.py agent.py mcp.py   the kinds (routes.py, rules.py: what routed kinds and rules share)
load.py        files → PolicySet (checks.py: the cross-document checks)
"""
