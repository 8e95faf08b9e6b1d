"""Generated policy sets for scale tests and the scale benchmark: many agents, backends and tools.

    write_policy_set(directory, agents=1000, backends=100, tools=100, per_rule=10, backends_per_agent=5)

writes `gateway.yaml` (one Gateway, agents by a trusted header), `backends.yaml`
(`backends` MCPBackends, endpoints on 127.0.0.1), `agents.yaml` and one file
per backend's MCPPolicy under `policies/`: every agent is granted
`per_rule` of a backend's `tools` tools on `backends_per_agent` backends, one
rule each. Deterministic for the same arguments and `seed`. `edit_rule` makes
the kind of one-line edit an operator makes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PolicySetShape:
    agents: int = 1000
    backends: int = 100
    tools: int = 100
    per_rule: int = 10
    backends_per_agent: int = 5

    @property
    def rules(self) -> int:
        return self.agents * self.backends_per_agent


def write_policy_set(directory: Path, shape: PolicySetShape = PolicySetShape(), *, listen_port: int = 39000,
                     backend_port: int = 40000, seed: int = 7) -> None:  # fmt: skip
    """Write the set (see the module docstring); `backend_port` + i is backend i's endpoint."""
    rnd = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gateway.yaml").write_text(
        "apiVersion: agentxds.dev/v1\nkind: Gateway\nmetadata: {name: scale}\nspec:\n"
        f"  listen: {{address: 127.0.0.1, port: {listen_port}}}\n  identity: {{trustedHeader: x-agent-id}}\n"
    )
    (directory / "backends.yaml").write_text("".join(
        f"---\napiVersion: agentxds.dev/v1\nkind: MCPBackend\nmetadata: {{name: b{b}}}\nspec:\n"
        f"  endpoints: [{{host: 127.0.0.1, port: {backend_port + b}}}]\n"
        for b in range(shape.backends)
    ))  # fmt: skip
    (directory / "agents.yaml").write_text("".join(
        f"---\napiVersion: agentxds.dev/v1\nkind: Agent\nmetadata: {{name: a{a}}}\nspec:\n  identity: {{header: a{a}}}\n"
        for a in range(shape.agents)
    ))  # fmt: skip
    rules: dict[int, list[tuple[int, list[int]]]] = {b: [] for b in range(shape.backends)}
    for a in range(shape.agents):
        for b in rnd.sample(range(shape.backends), shape.backends_per_agent):
            rules[b].append((a, rnd.sample(range(shape.tools), shape.per_rule)))
    policies = directory / "policies"
    policies.mkdir(exist_ok=True)
    for b, granted in rules.items():
        lines = [f"apiVersion: agentxds.dev/v1\nkind: MCPPolicy\nmetadata: {{name: p{b}}}\nspec:\n  backend: b{b}\n"
                 "  rules:\n"]  # fmt: skip
        lines += [f"    - agents: [a{a}]\n      tools: [{', '.join(f'tool_{b}_{t}' for t in tools)}]\n"
                  for a, tools in granted]  # fmt: skip
        if not granted:
            lines.append(f"    - agents: [a0]\n      tools: [tool_{b}_0]\n")
        (policies / f"p{b}.yaml").write_text("".join(lines))


def edit_rule(directory: Path, backend: int, rnd: random.Random) -> Path:
    """Grant the first agent of backend `backend`'s policy one more tool (a new name each time);
    returns the file edited."""
    path = directory / "policies" / f"p{backend}.yaml"
    text = path.read_text()
    tool = f"tool_{backend}_extra{rnd.randrange(10**9)}"
    path.write_text(text.replace("      tools: [", f"      tools: [{tool}, ", 1))
    return path
