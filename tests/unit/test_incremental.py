"""Incremental rebuilds give exactly what full rebuilds give: a property test over random edit sequences.

One pipeline follows a generated policy set through a sequence of random
edits (rules, agents, backends, whole files, lines shifted, gateway
settings, edits that break the set and edits that fix it), reusing what it
built before (the loader's DocumentCache, the IR's BuildMemo, the
translators' TranslateMemo). After every edit a fresh pipeline builds the
same files from nothing. Both must publish byte-identical snapshots (same
content hash, per gateway and per type) or refuse with the same
diagnostics, file, line and field.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.policy_gen import PolicySetShape, edit_rule, write_policy_set
from xds_server.controlplane.pipeline import Pipeline
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.status import StatusRecorder

SHAPE = PolicySetShape(agents=30, backends=6, tools=12, per_rule=3, backends_per_agent=2)
AGENT = "---\napiVersion: agentxds.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  identity: {{header: {header}}}\n"


def _grant_tool(d: Path, rnd: random.Random) -> None:
    edit_rule(d, rnd.randrange(SHAPE.backends), rnd)


def _add_agent(d: Path, rnd: random.Random) -> None:
    name = f"new{rnd.randrange(10**6)}"
    with (d / "agents.yaml").open("a") as f:
        f.write(AGENT.format(name=name, header=name))
    policy = d / "policies" / f"p{rnd.randrange(SHAPE.backends)}.yaml"
    policy.write_text(policy.read_text() + f"    - agents: [{name}]\n      tools: [tool_x_{name}]\n")


def _rename_agent_header(d: Path, rnd: random.Random) -> None:
    text = (d / "agents.yaml").read_text()
    n = rnd.randrange(SHAPE.agents)
    (d / "agents.yaml").write_text(text.replace(f"{{header: a{n}}}", f"{{header: a{n}-v{rnd.randrange(99)}}}", 1))


def _shift_lines(d: Path, rnd: random.Random) -> None:
    target = rnd.choice(
        [d / "agents.yaml", d / "backends.yaml", d / "policies" / f"p{rnd.randrange(SHAPE.backends)}.yaml"]
    )
    target.write_text("# a comment\n" * rnd.randint(1, 3) + target.read_text())


def _drop_last_rule(d: Path, rnd: random.Random) -> None:
    policy = d / "policies" / f"p{rnd.randrange(SHAPE.backends)}.yaml"
    lines = policy.read_text().splitlines(keepends=True)
    if sum(1 for line in lines if line.startswith("    - agents")) > 1:
        policy.write_text("".join(lines[:-2]))


def _conditional_rule(d: Path, rnd: random.Random) -> None:
    policy = d / "policies" / f"p{rnd.randrange(SHAPE.backends)}.yaml"
    policy.write_text(policy.read_text() + f"    - agents: [a{rnd.randrange(SHAPE.agents)}]\n      tools: [cond_tool]\n"
                      "      when: 'args.repo.startsWith(\"acme/\")'\n")  # fmt: skip


def _argument_rule(d: Path, rnd: random.Random) -> None:
    policy = d / "policies" / f"p{rnd.randrange(SHAPE.backends)}.yaml"
    policy.write_text(policy.read_text() + f"    - agents: [a{rnd.randrange(SHAPE.agents)}]\n      tools: [arg_tool]\n"
                      "      arguments: {repo: {prefix: \"acme/\"}}\n")  # fmt: skip


def _gateway_limit(d: Path, rnd: random.Random) -> None:
    gateway = d / "gateway.yaml"
    text = gateway.read_text().split("  limits:")[0]
    gateway.write_text(text + f"  limits: {{maxRequestBodyBytes: {rnd.choice([8192, 16384, 65536])}}}\n")


def _new_backend(d: Path, rnd: random.Random) -> None:
    name = f"nb{rnd.randrange(10**6)}"
    with (d / "backends.yaml").open("a") as f:
        f.write(f"---\napiVersion: agentxds.dev/v1\nkind: MCPBackend\nmetadata: {{name: {name}}}\nspec:\n"
                f"  endpoints: [{{host: 127.0.0.1, port: 41000}}]\n  tasks: {{enabled: {rnd.choice(['true', 'false'])}}}\n")  # fmt: skip
    (d / "policies" / f"{name}.yaml").write_text(
        f"apiVersion: agentxds.dev/v1\nkind: MCPPolicy\nmetadata: {{name: {name}}}\nspec:\n  backend: {name}\n"
        f"  rules:\n    - agents: [a{rnd.randrange(SHAPE.agents)}]\n      tools: [t1]\n"
    )


def _break_and_fix(d: Path, rnd: random.Random) -> None:
    """A typo (an unknown field) that the next edit of the same kind may or may not repair."""
    policy = d / "policies" / f"p{rnd.randrange(SHAPE.backends)}.yaml"
    text = policy.read_text()
    policy.write_text(text.replace("tools:", "toolz:", 1) if "toolz:" not in text else text.replace("toolz:", "tools:"))


def _trusted_header(d: Path, rnd: random.Random) -> None:
    gateway = d / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("trustedHeader: x-agent-id", "trustedHeader: x-caller", 1)
                       if "x-agent-id" in gateway.read_text()
                       else gateway.read_text().replace("trustedHeader: x-caller", "trustedHeader: x-agent-id", 1))  # fmt: skip


def _any_agent_rule(d: Path, rnd: random.Random) -> None:
    policy = d / "policies" / f"p{rnd.randrange(SHAPE.backends)}.yaml"
    policy.write_text(policy.read_text() + f"    - agents: ['*']\n      tools: [everyone_{rnd.randrange(99)}]\n")


def _remove_agent(d: Path, rnd: random.Random) -> None:
    """An agent no rule names any more, then removed (rules naming it would be an error)."""
    name = f"a{rnd.randrange(SHAPE.agents)}"
    for policy in (d / "policies").glob("*.yaml"):
        text = policy.read_text()
        policy.write_text(text.replace(f"agents: [{name}]", "agents: [a0]"))
    agents = (d / "agents.yaml").read_text()
    block = AGENT.format(name=name, header=name)
    if name != "a0":
        (d / "agents.yaml").write_text(agents.replace(block, ""))


def _delete_policy_file(d: Path, rnd: random.Random) -> None:
    files = sorted((d / "policies").glob("nb*.yaml"))
    if files:
        files[0].unlink()


EDITS = [_grant_tool, _add_agent, _rename_agent_header, _shift_lines, _drop_last_rule, _conditional_rule,
         _argument_rule, _gateway_limit, _new_backend, _break_and_fix, _delete_policy_file, _trusted_header,
         _any_agent_rule, _remove_agent]  # fmt: skip


def _outcome(pipeline: Pipeline) -> tuple[bool, tuple[str, ...], dict[str, tuple[str, dict[str, str]]]]:
    result = pipeline.reload()
    snapshots = {}
    for group in pipeline.cache.groups():
        snap = pipeline.cache.get(group)
        assert snap is not None
        snapshots[group] = (snap.version, dict(snap.type_versions))
    return result.ok, result.errors, snapshots


@settings(max_examples=16, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32), steps=st.lists(st.sampled_from(range(len(EDITS))), min_size=4,
                                                                        max_size=8))  # fmt: skip
def test_incremental_rebuilds_publish_what_full_rebuilds_publish(tmp_path_factory, seed: int, steps: list[int]) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("policies")
    write_policy_set(directory, SHAPE)
    incremental = Pipeline(directory, SnapshotCache(), StatusRecorder(), allow_emptying=True)
    assert incremental.reload().ok
    rnd = random.Random(seed)
    for step in steps:
        EDITS[step](directory, rnd)
        ok, errors, published = _outcome(incremental)
        fresh = Pipeline(directory, SnapshotCache(), StatusRecorder(), allow_emptying=True)
        fresh_ok, fresh_errors, fresh_published = _outcome(fresh)
        assert (ok, errors) == (fresh_ok, fresh_errors), EDITS[step].__name__
        if ok:
            assert published == fresh_published, EDITS[step].__name__
            # What the policy service reads, and the files the watcher follows, are the same too.
            assert incremental.ir == fresh.ir and incremental.files == fresh.files, EDITS[step].__name__
    shutil.rmtree(directory)


def test_documents_moved_by_edits_above_them_keep_exact_lines(tmp_path: Path) -> None:
    """The loader reuses documents whose text did not change wherever they moved: diagnostics and
    the lines later stages point at are those of a load from nothing, however often they moved."""
    from xds_server.policy.diagnostics import PolicyError
    from xds_server.policy.doc_cache import DocumentCache
    from xds_server.policy.load import load_directory

    write_policy_set(tmp_path, SHAPE)
    cache = DocumentCache()
    load_directory(tmp_path, cache)
    agents = tmp_path / "agents.yaml"
    for lines in (2, 5, 1):  # move every document by a different amount each time
        agents.write_text("# moved\n" * lines + agents.read_text())
        cached, fresh = load_directory(tmp_path, cache), load_directory(tmp_path)
        assert [a.line_of(("spec", "identity")) for a in cached.agents] == [
            a.line_of(("spec", "identity")) for a in fresh.agents]  # fmt: skip
        assert [a.source for a in cached.agents] == [a.source for a in fresh.agents]
    agents.write_text(agents.read_text().replace("{header: a7}", "{header: a7, spife: x}"))
    errors = []
    for c in (cache, None):
        try:
            load_directory(tmp_path, c)
        except PolicyError as exc:
            errors.append([str(d) for d in exc.diagnostics])
    assert len(errors) == 2 and errors[0] == errors[1] and "spife" in errors[0][0], errors
