"""agentxds: an xDS control plane that turns stock Envoy into an agent gateway.

The packages are the layers of one data flow, imported one way
(tests/unit/test_layering.py keeps it so):

    policy ─► ir ─► translate ─► xds (snapshots, ADS) ─► Envoy
                └─► authz (the policy service reads the IR)

`core` is shared by all of them, `sources` says where policies come from,
`controlplane` runs the flow, `cli` is the `agentxds` command, `runtime`
starts Envoy. See the README's "How it works".
"""
