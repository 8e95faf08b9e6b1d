"""The policy service: decisions Envoy cannot make natively (CEL conditions, quotas, approvals)."""
