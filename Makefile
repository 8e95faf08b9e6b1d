# Everything runs from a local virtualenv that these targets create on demand.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: up test lint validate bench bench-soak bench-scale bench-fleet bench-a2a bench-vmcp bench-policy-tls clean

$(BIN)/agentxds: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

up: $(BIN)/agentxds             ## run the gateway with the demo policy and demo MCP server
	$(BIN)/agentxds up --demo policies/demo

# A real A2A 0.3 agent for the end-to-end tests: a2a-sdk 0.3 cannot share .venv with 1.x (one distribution).
A2A03 ?= .venv-a2a03
$(A2A03)/bin/uvicorn:
	$(PYTHON) -m venv $(A2A03)
	$(A2A03)/bin/pip install -q "a2a-sdk[http-server]==0.3.26" "uvicorn>=0.30"

test: lint $(A2A03)/bin/uvicorn  ## run the whole test suite (lint and types, then unit, golden, end to end)
	$(BIN)/pytest tests

lint: $(BIN)/agentxds           ## formatting, lint and static types
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

validate: $(BIN)/agentxds       ## check the shipped policy sets
	$(BIN)/agentxds validate policies/demo
	$(BIN)/agentxds validate policies/compose

bench: $(BIN)/agentxds          ## latency and throughput: direct, native and policy-service paths (wrk)
	$(BIN)/python bench/run.py

bench-soak: $(BIN)/agentxds     ## memory and served rate under abuse vs at rest (wrk + tests/e2e/abusers.py)
	$(BIN)/python bench/soak.py

bench-scale: $(BIN)/agentxds    ## control-plane stages on 100-5,000 agents; edit -> ACK with 1 and 20 Envoys
	$(BIN)/python bench/scale.py

bench-fleet: $(BIN)/agentxds     ## legacy sessions through 1 vs 2 Envoys; endpoint move -> first call served there
	$(BIN)/python bench/fleet.py

bench-a2a: $(BIN)/agentxds       ## A2A SendMessage direct vs through the gateway; the exchange's sealed ids per call
	$(BIN)/python bench/a2a.py

bench-vmcp: $(BIN)/agentxds      ## a virtual MCP server's tools/call vs the plain route and direct; tools/list cold and cached
	$(BIN)/python bench/vmcp.py

bench-policy-tls: $(BIN)/agentxds  ## a decision over the policy-service hop in plain HTTP vs mTLS (wrk, alternated rounds)
	$(BIN)/python bench/policy_tls.py

clean:
	rm -rf $(VENV) $(A2A03) build *.egg-info
