"""Control-plane scale benchmark: build stages on large generated policy sets, and edit -> ACK latency.

    .venv/bin/python bench/scale.py                  # or: make bench-scale
    .venv/bin/python bench/scale.py --sizes 100,1000 --envoys 1,20 --edits 20

1. Stages. For generated sets of 100, 1,000 and 5,000 agents (tests/policy_gen.py:
   agents/10 backends of 100 tools, every agent granted 10 tools on 5 backends,
   so 5 rules an agent), each in a fresh process: load, IR, translate + verify,
   snapshot, the total, the size of what Envoy receives and the process's max
   RSS; then a one-file edit rebuilt by the same pipeline (incremental).
   `agentxds validate` and `agentxds render --to xds` are timed as users run them.
2. Edit -> ACK. The control plane (`ControlPlane`, watching the 1,000-agent
   set, as `agentxds serve` runs it) and N real Envoys (one worker each); each
   edit grants one more tool in one policy file, and the time from the write
   to every Envoy's ACK of the new version is taken (p50, p99, max); also
   whether an Envoy's listener was drained (it must not be: only routes change).

Results: Markdown tables on stdout and bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.policy_gen import PolicySetShape, edit_rule, write_policy_set  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "scale.json"


def shape_of(agents: int) -> PolicySetShape:
    return PolicySetShape(agents=agents, backends=max(agents // 10, 5))


# ---------------------------------------------------------------- stages (in a child process)


def stages(directory: Path) -> dict[str, Any]:
    """Time each stage of one full build, then of a one-file edit (this process's memos)."""
    from xds_server.controlplane.pipeline import Pipeline, to_snapshot, translate_checked
    from xds_server.ir.build import build_ir
    from xds_server.sources.directory import DirectorySource
    from xds_server.xds.cache import SnapshotCache
    from xds_server.xds.status import StatusRecorder

    source = DirectorySource(directory)
    t0 = time.perf_counter()
    policy_set = DirectorySource(directory).load()
    t1 = time.perf_counter()
    ir = build_ir(policy_set)
    t2 = time.perf_counter()
    resources = translate_checked(ir)
    t3 = time.perf_counter()
    snapshots = {g: to_snapshot(r) for g, r in resources.items()}
    t4 = time.perf_counter()
    size = sum(len(a.value) for s in snapshots.values() for anys in s.anys.values() for a in anys)
    pipeline = Pipeline(source, SnapshotCache(), StatusRecorder())
    assert pipeline.reload().ok
    rnd, edits = random.Random(1), []
    for i in range(5):
        edit_rule(directory, i % 3, rnd)
        started = time.perf_counter()
        assert pipeline.reload().ok
        edits.append(time.perf_counter() - started)
    return {
        "load_s": t1 - t0, "ir_s": t2 - t1, "translate_verify_s": t3 - t2, "snapshot_s": t4 - t3,
        "total_s": t4 - t0, "bytes": size, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "edit_rebuild_s": sorted(edits),
    }  # fmt: skip


def timed(argv: list[str]) -> tuple[float, float]:
    """(seconds, max RSS MiB) of a command, output discarded."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=True)  # fmt: skip
    return time.perf_counter() - started, int(proc.stderr.strip().splitlines()[-1]) / 1024


# ---------------------------------------------------------------- edit -> ACK


async def edit_to_ack(directory: Path, envoys: int, edits: int, workdir: Path) -> dict[str, Any]:
    from xds_server.controlplane.service import ControlPlane
    from xds_server.runtime.bootstrap import render_bootstrap
    from xds_server.runtime.envoy import EnvoyProcess
    from xds_server.xds import snapshot as xds

    control = ControlPlane(directory, port=0)
    await control.start()
    rss_alone = _rss_mib()
    started: list[EnvoyProcess] = []
    try:
        for i in range(envoys):
            bootstrap = render_bootstrap(node_id=f"scale-{i}", node_cluster="scale", xds_host="127.0.0.1",
                                         xds_port=control.port, admin_port=0)  # fmt: skip
            started.append(EnvoyProcess(bootstrap, workdir=workdir / f"envoy-{i}", log_level="error",
                                        concurrency=1).start())  # fmt: skip

        def acked(version: str) -> bool:
            snap = control.cache.get("scale")
            if snap is None or snap.version != version:
                return False
            nodes = [n for n in control.recorder.view().nodes if n.group == "scale" and n.connected]
            want = {t: snap.type_version(t) for t in (xds.CLUSTER, xds.EXTENSION_CONFIG, xds.LISTENER, xds.ROUTE)}
            return len(nodes) == envoys and all(
                {t.type_url: t.acked_version for t in n.types if t.type_url in want} == want for n in nodes
            )

        snap = control.cache.get("scale")
        assert snap is not None
        await _until(lambda: acked(snap.version), 120)
        rss_with_streams = _rss_mib()
        drains_before = [_drains(e) for e in started]
        rnd, latencies, built = random.Random(2), [], []
        for i in range(edits):
            reloads = control.reloads
            write = time.perf_counter()
            edit_rule(directory, i % 7, rnd)
            await _until(lambda reloads=reloads: control.reloads > reloads, 30)  # type: ignore[misc]
            built.append(time.perf_counter() - write)
            version = control.cache.get("scale").version  # type: ignore[union-attr]
            await _until(lambda version=version: acked(version), 30)  # type: ignore[misc]
            latencies.append(time.perf_counter() - write)
            await asyncio.sleep(0.2)
        drained = [_drains(e) - d for e, d in zip(started, drains_before, strict=True)]
        return {"envoys": envoys, "latency_s": sorted(latencies), "published_s": sorted(built),
                "drained_listeners": sum(drained), "control_plane_rss_mb": {"alone": rss_alone,
                "streams_acked": rss_with_streams}}  # fmt: skip
    finally:
        for envoy in started:
            envoy.stop()
        await control.stop()


def _rss_mib() -> float:
    """This process's resident set now (the control plane runs in it), MiB, after giving back to the
    system what the allocator holds free (so the figure is what is live, not what was once used)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    text = Path("/proc/self/status").read_text()
    return int(text.split("VmRSS:")[1].split()[0]) / 1024


def _drains(envoy: Any) -> int:
    stats = envoy.stats()
    return int(stats.get("listener_manager.listener_modified", 0)) + int(
        stats.get("listener_manager.total_listeners_draining", 0)
    )


async def _until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        await asyncio.sleep(0.002)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="agents per generated set (default 100,1000,5000)")
    parser.add_argument("--envoys", default="1,20", help="Envoys for edit -> ACK (default 1,20)")
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--stages-of", type=Path, help=argparse.SUPPRESS)  # the child process's entry
    args = parser.parse_args(argv)
    if args.stages_of is not None:
        print(json.dumps(stages(args.stages_of)))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="agentxds-scale-"))
    result: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": {}, "edit_to_ack": []}
    try:
        for agents in (int(a) for a in args.sizes.split(",")):
            directory = workdir / f"set-{agents}"
            write_policy_set(directory, shape_of(agents))
            out = subprocess.run([sys.executable, __file__, "--stages-of", str(directory)], capture_output=True,
                                 text=True, check=True)  # fmt: skip
            row = json.loads(out.stdout)
            shape = shape_of(agents)
            row["shape"] = {"agents": agents, "backends": shape.backends, "tools": shape.backends * shape.tools,
                            "rules": shape.rules}  # fmt: skip
            if agents == 1000:
                agentxds = [sys.executable, "-m", "xds_server.cli"]
                row["validate_s"], row["validate_rss_mb"] = timed([*agentxds, "validate", str(directory)])
                row["render_s"], row["render_rss_mb"] = timed([*agentxds, "render", str(directory), "--to", "xds"])
            result["stages"][agents] = row
            print(f"{agents} agents: {json.dumps(row)}", flush=True)
        directory = workdir / "edits"
        write_policy_set(directory, shape_of(1000))
        for n in (int(e) for e in args.envoys.split(",")):
            shutil.rmtree(directory)
            write_policy_set(directory, shape_of(1000))
            point = asyncio.run(edit_to_ack(directory, n, args.edits, workdir / f"envoys-{n}"))
            result["edit_to_ack"].append(point)
            lat = point["latency_s"]
            print(f"{n} Envoy(s): edit -> ACK p50 {pct(lat, 0.5) * 1000:.0f} ms, p99 {pct(lat, 0.99) * 1000:.0f} ms, "
                  f"max {max(lat) * 1000:.0f} ms (published after p50 {pct(point['published_s'], 0.5) * 1000:.0f} ms); "
                  f"listeners drained: {point['drained_listeners']}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    lines = ["| policy set | load | IR | translate + verify | snapshot | total | one-file edit (median) | xDS size | max RSS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["stages"].values():
        s = r["shape"]
        lines.append(
            f"| {s['agents']:,} agents, {s['backends']} backends, {s['rules']:,} rules | {r['load_s']:.2f} s "
            f"| {r['ir_s']:.2f} s | {r['translate_verify_s']:.2f} s | {r['snapshot_s']:.2f} s | {r['total_s']:.2f} s "
            f"| {statistics.median(r['edit_rebuild_s']) * 1000:.0f} ms | {r['bytes'] / 1e6:.1f} MB "
            f"| {r['max_rss_mb']:.0f} MB |"
        )
    lines += ["", "| Envoys | edit -> ACK p50 | p99 | max | listeners drained | control plane RSS, alone -> all ACKed |",
              "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for p in result["edit_to_ack"]:
        lat, rss = p["latency_s"], p["control_plane_rss_mb"]
        lines.append(f"| {p['envoys']} | {pct(lat, 0.5) * 1000:.0f} ms | {pct(lat, 0.99) * 1000:.0f} ms "
                     f"| {max(lat) * 1000:.0f} ms | {p['drained_listeners']} "
                     f"| {rss['alone']:.0f} -> {rss['streams_acked']:.0f} MB |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
