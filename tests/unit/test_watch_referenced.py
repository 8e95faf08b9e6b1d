"""The watcher follows the files the policies name, also outside the policy directory, and
re-arms when the policies start naming files somewhere else."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.unit.test_tls_translate import write_policies
from xds_server.cli import pki as certs
from xds_server.controlplane.pipeline import Pipeline, ReloadResult
from xds_server.controlplane.watch import links_to, outside_directories, watch_policies
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.status import StatusRecorder


async def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Watched:
    """A pipeline on a policy directory, published once, with its watcher running."""

    pipeline: Pipeline
    cache: SnapshotCache
    results: list[ReloadResult] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


@contextlib.asynccontextmanager
async def watched(
    policies: Path, after_reload: Callable[[Watched, ReloadResult], None] | None = None
) -> AsyncIterator[Watched]:
    """Publish `policies`, watch them (debounce 20 ms), and stop the watcher on exit. Every reload's
    result is in `results`; `after_reload` runs right after one, before any re-arming."""
    cache = SnapshotCache()
    state = Watched(Pipeline(policies, cache, StatusRecorder()), cache)
    assert state.pipeline.reload().ok

    def on_reload(result: ReloadResult) -> None:
        state.results.append(result)
        if after_reload is not None:
            after_reload(state, result)

    stop = asyncio.Event()
    state.task = asyncio.create_task(watch_policies(state.pipeline, debounce_ms=20, stop=stop, on_reload=on_reload))
    try:
        await asyncio.sleep(0.3)  # let the watchers start
        yield state
    finally:
        stop.set()
        await asyncio.wait_for(state.task, timeout=5)


async def test_rotation_outside_the_policy_dir_and_rearming(tmp_path: Path) -> None:
    policies = write_policies(tmp_path)  # certificates in tmp_path/pki, outside the policy dir
    async with watched(policies) as w:
        version = w.cache.get("gw").version
        certs.write_dev_pki(tmp_path / "pki", trust_domain="example.org")  # rotate the gateway certificate
        await wait_for(lambda: w.cache.get("gw").version != version, "the rotated certificate to be published")
        assert w.results and w.results[-1].ok

        # The policies now name files in another directory: the watcher follows them there.
        write_policies(tmp_path, pki=tmp_path / "pki2")
        await wait_for(lambda: tmp_path / "pki2" / "gateway.crt" in w.pipeline.files, "the new files to be named")
        await asyncio.sleep(0.3)  # re-armed watchers start
        version = w.cache.get("gw").version
        certs.write_dev_pki(tmp_path / "pki2", trust_domain="example.org")
        await wait_for(lambda: w.cache.get("gw").version != version, "a rotation in the new directory")


SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def published_certificate(cache: SnapshotCache) -> bytes:
    [secret] = [s for s in cache.get("gw").resources[SECRET_TYPE] if s.name == "gateway/gw/cert"]
    return bytes(secret.tls_certificate.certificate_chain.inline_bytes)


async def rotation_is_published(policies: Path, rotate: Callable[[], None], new_certificate: Path) -> None:
    """Watch `policies`, call `rotate()`, and wait for `new_certificate`'s bytes to be published."""
    async with watched(policies) as w:
        rotate()
        expected = new_certificate.read_bytes()
        await wait_for(lambda: published_certificate(w.cache) == expected, "the rotated certificate to be published")


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
    store, named, fresh = tmp_path / "store", tmp_path / "named", tmp_path / "fresh"
    certs.write_dev_pki(store, trust_domain="example.org", agents=["triage"])
    certs.write_dev_pki(fresh, trust_domain="example.org", agents=["triage"])
    named.mkdir()
    for name in ("ca.crt", "gateway.crt", "gateway.key"):
        (named / name).symlink_to(store / name)
    policies = write_policies(tmp_path, pki=named)

    def overwrite() -> None:  # same inodes: only the target's directory sees it
        for name in ("gateway.key", "gateway.crt"):
            (store / name).write_bytes((fresh / name).read_bytes())

    await rotation_is_published(policies, overwrite, fresh / "gateway.crt")


async def test_a_swapped_link_further_along_the_chain_is_followed(tmp_path: Path) -> None:
    """named/gateway.crt -> store/current/gateway.crt, store/current -> v1: swapping `current` counts."""
    store, named = tmp_path / "store", tmp_path / "named"
    certs.write_dev_pki(store / "v1", trust_domain="example.org", agents=["triage"])
    (store / "current").symlink_to("v1")
    named.mkdir()
    for name in ("ca.crt", "gateway.crt", "gateway.key"):
        (named / name).symlink_to(store / "current" / name)
    policies = write_policies(tmp_path, pki=named)
    assert links_to(named / "gateway.crt") == [named / "gateway.crt", store / "current"]
    assert {named, store, store / "v1"} <= set(outside_directories(policies, [named / "gateway.crt"]))

    def swap() -> None:
        certs.write_dev_pki(store / "v2", trust_domain="example.org", agents=["triage"])
        (store / "next").symlink_to("v2")
        os.replace(store / "next", store / "current")

    await rotation_is_published(policies, swap, store / "v2" / "gateway.crt")


async def test_a_named_file_in_a_policy_directory_given_through_a_link_is_followed(tmp_path: Path) -> None:
    real = write_policies(tmp_path / "real")
    text = (real / "all.yaml").read_text()
    (real / "all.yaml").write_text(
        text.replace("  tls:\n", "  policyService: {secret: {file: ps.secret}}\n  tls:\n", 1)
    )
    (real / "ps.secret").write_text("a" * 32)
    (tmp_path / "linked").symlink_to(real)  # e.g. /etc/agentxds/policies -> a checkout
    async with watched(tmp_path / "linked") as w:
        (real / "ps.secret").write_text("short")  # not a policy or key file: followed only as a named one
        await wait_for(lambda: w.results and not w.results[-1].ok, "the unusable secret to be refused")
        assert "ps.secret" in w.results[-1].errors[0] and "at least 32" in w.results[-1].errors[0]


def test_dot_dot_from_a_policy_directory_given_through_a_link_means_what_the_os_makes_of_it(tmp_path: Path) -> None:
    app = tmp_path / "srv" / "app"
    certs.write_dev_pki(app / "pki", trust_domain="example.org", agents=["triage"])
    write_policies(app, pki=app / "pki")
    text = (app / "policies" / "all.yaml").read_text().replace(str(app / "pki"), "../pki")
    (app / "policies" / "all.yaml").write_text(text)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "policies").symlink_to(app / "policies")
    pipeline = Pipeline(tmp_path / "etc" / "policies", SnapshotCache(), StatusRecorder())
    assert pipeline.reload().ok  # ../pki next to the real directory, not next to the link
    assert app / "pki" / "gateway.crt" in pipeline.files


async def test_a_link_loop_is_refused_and_the_watcher_lives_on(tmp_path: Path) -> None:
    policies = write_policies(tmp_path)
    good = (policies / "all.yaml").read_text()
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "a.crt").symlink_to("b.crt")
    (tmp_path / "loop" / "b.crt").symlink_to("a.crt")
    async with watched(policies) as w:
        looping = good.replace(str(tmp_path / "pki" / "gateway.crt"), str(tmp_path / "loop" / "a.crt"))
        (policies / "all.yaml").write_text(looping)
        await wait_for(lambda: w.results and not w.results[-1].ok, "the looping file to be refused")
        assert any("a.crt" in line for line in w.results[-1].errors)
        version = w.cache.get("gw").version
        certs.write_dev_pki(tmp_path / "pki", trust_domain="example.org")
        (policies / "all.yaml").write_text(good)
        await wait_for(lambda: w.results[-1].ok and w.cache.get("gw").version != version, "the fixed policy")
        assert w.task is not None and not w.task.done()


async def test_a_change_while_the_watchers_are_re_armed_is_read(tmp_path: Path) -> None:
    policies = write_policies(tmp_path)
    certs.write_dev_pki(tmp_path / "pki2", trust_domain="example.org", agents=["triage"])
    rotated: list[bytes] = []

    def rotate_before_the_new_watcher_runs(w: Watched, _: ReloadResult) -> None:
        # Called after the rebuild that names pki2, before pki2 is watched: no watcher sees this.
        if not rotated and tmp_path / "pki2" / "gateway.crt" in w.pipeline.files:
            certs.write_dev_pki(tmp_path / "pki2", trust_domain="example.org")
            rotated.append((tmp_path / "pki2" / "gateway.crt").read_bytes())

    async with watched(policies, rotate_before_the_new_watcher_runs) as w:
        write_policies(tmp_path, pki=tmp_path / "pki2")
        await wait_for(lambda: rotated and published_certificate(w.cache) == rotated[0], "the catch-up rebuild")


def test_near_keeps_links_and_takes_dot_dot_as_the_os_does(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from xds_server.ir.routes import near

    (tmp_path / "real" / "policies").mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "real" / "policies")
    (tmp_path / "real" / "volume").mkdir()
    (tmp_path / "real" / "volume" / "..data").symlink_to(".")
    located: Any = SimpleNamespace(source=SimpleNamespace(file=str(tmp_path / "linked" / "gw.yaml")))
    base = tmp_path / "real"
    assert near(located, None) is None
    assert near(located, "certs/./ca.crt") == str(base / "policies" / "certs" / "ca.crt")
    assert near(located, "../volume/..data/ca.crt") == str(base / "volume" / "..data" / "ca.crt")
    assert near(located, "/etc/x/../pki/ca.crt") == "/etc/pki/ca.crt"
