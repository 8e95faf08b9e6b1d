"""The watcher follows the files the policies name, also outside the policy directory, and
re-arms when the policies start naming files somewhere else."""

from __future__ import annotations

import asyncio
import os
import shutil
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


SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def published_certificate(cache: SnapshotCache) -> bytes:
    [secret] = [s for s in cache.get("gw").resources[SECRET_TYPE] if s.name == "gateway/gw/cert"]
    return bytes(secret.tls_certificate.certificate_chain.inline_bytes)


async def rotation_is_published(policies: Path, rotate, new_certificate: Path) -> None:
    """Start a watched pipeline on `policies`, call `rotate()`, and wait for `new_certificate`'s bytes."""
    cache = SnapshotCache()
    pipeline = Pipeline(policies, cache, StatusRecorder())
    assert pipeline.reload().ok
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_policies(pipeline, debounce_ms=20, stop=stop))
    try:
        await asyncio.sleep(0.3)  # let the watchers start
        rotate()
        expected = new_certificate.read_bytes()
        await wait_for(lambda: published_certificate(cache) == expected, "the rotated certificate to be published")
    finally:
        stop.set()
        await asyncio.wait_for(watcher, timeout=5)


def kubelet_volume(root: Path) -> Path:
    """A Secret volume as the kubelet lays it out: name -> ..data/name, ..data -> ..<timestamp>."""
    volume = root / "volume"
    certs.write_dev_pki(volume / "..2026_01", trust_domain="example.org", agents=["triage"])
    (volume / "..data").symlink_to("..2026_01")
    for name in ("ca.crt", "gateway.crt", "gateway.key"):
        (volume / name).symlink_to(Path("..data") / name)
    return volume


async def test_a_kubelet_secret_renewal_is_followed_and_named_through_its_links(tmp_path: Path) -> None:
    volume = kubelet_volume(tmp_path)
    policies = write_policies(tmp_path, pki=volume)

    def renew() -> None:  # the kubelet's atomic update: new directory, ..data swapped, old removed
        certs.write_dev_pki(volume / "..2026_02", trust_domain="example.org", agents=["triage"])
        (volume / "..data_tmp").symlink_to("..2026_02")
        (volume / "..data_tmp").rename(volume / "..data")
        shutil.rmtree(volume / "..2026_01")

    pipeline = Pipeline(policies, SnapshotCache(), StatusRecorder())
    assert pipeline.reload().ok
    assert volume / "gateway.crt" in pipeline.files  # the name, not the timestamped target
    await rotation_is_published(policies, renew, volume / "..2026_02" / "gateway.crt")


async def test_a_swapped_directory_link_is_followed_while_the_old_target_stays(tmp_path: Path) -> None:
    certs.write_dev_pki(tmp_path / "v1", trust_domain="example.org", agents=["triage"])
    (tmp_path / "current").symlink_to("v1")
    policies = write_policies(tmp_path, pki=tmp_path / "current")

    def swap() -> None:  # ln -sfn v2 current, v1 kept: nothing in v1 changes
        certs.write_dev_pki(tmp_path / "v2", trust_domain="example.org", agents=["triage"])
        (tmp_path / "next").symlink_to("v2")
        os.replace(tmp_path / "next", tmp_path / "current")

    await rotation_is_published(policies, swap, tmp_path / "v2" / "gateway.crt")


async def test_a_target_written_in_place_through_a_file_link_is_followed(tmp_path: Path) -> None:
    store, named = tmp_path / "store", tmp_path / "named"
    certs.write_dev_pki(store, trust_domain="example.org", agents=["triage"])
    named.mkdir()
    for name in ("ca.crt", "gateway.crt", "gateway.key"):
        (named / name).symlink_to(store / name)
    policies = write_policies(tmp_path, pki=named)
    await rotation_is_published(
        policies, lambda: certs.write_dev_pki(store, trust_domain="example.org"), store / "gateway.crt"
    )
