"""xDS serving: content-addressed snapshots, the per-group cache, the ADS state machine and server,
and the status API. Knows Envoy resources only, never policies or the IR."""
