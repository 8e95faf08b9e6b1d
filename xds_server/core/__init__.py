"""Neutral building blocks that every layer may use, and that use no other layer.

`errors` is the JSON-RPC error catalogue, `cel` compiles and evaluates `when:`
conditions (policy validation and the policy service share it), `wire` names
what Envoy's configuration and the policy service must agree on (metadata
namespaces, headers, paths), and `secrets` reads what policies only reference.
"""
