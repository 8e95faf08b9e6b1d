"""xDS serving: content-addressed snapshots, the per-group cache, the ADS state machine and server,
the status API, and what one node may ask to differ (node_overrides.py: its listen port). Knows
Envoy resources only, never policies or the IR."""
