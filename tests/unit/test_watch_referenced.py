"""The watcher follows the files the policies name, also outside the policy directory, and
re-arms when the policies start naming files somewhere else."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.unit.test_tls_translate import write_policies
from xds_server.cli import pki as certs
from xds_server.controlplane.pipeline import Pipeline, ReloadResult
from xds_server.controlplane.watch import watch_policies
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.status import StatusRecorder


async def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_rotation_outside_the_policy_dir_and_rearming(tmp_path: Path) -> None:
    policies = write_policies(tmp_path)  # certificates in tmp_path/pki, outside the policy dir
    cache = SnapshotCache()
    pipeline = Pipeline(policies, cache, StatusRecorder())
    assert pipeline.reload().ok
    results: list[ReloadResult] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_policies(pipeline, debounce_ms=20, stop=stop, on_reload=results.append))
    try:
        await asyncio.sleep(0.3)  # let the watchers start
        version = cache.get("gw").version
        certs.write_dev_pki(tmp_path / "pki", trust_domain="example.org")  # rotate the gateway certificate
        await wait_for(lambda: cache.get("gw").version != version, "the rotated certificate to be published")
        assert results and results[-1].ok

        # The policies now name files in another directory: the watcher follows them there.
        write_policies(tmp_path, pki=tmp_path / "pki2")
        await wait_for(lambda: tmp_path / "pki2" / "gateway.crt" in pipeline.files, "the new files to be named")
        await asyncio.sleep(0.3)  # re-armed watchers start
        version = cache.get("gw").version
        certs.write_dev_pki(tmp_path / "pki2", trust_domain="example.org")
        await wait_for(lambda: cache.get("gw").version != version, "a rotation in the new directory")
    finally:
        stop.set()
        await asyncio.wait_for(watcher, timeout=5)
