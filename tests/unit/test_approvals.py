"""Approvals: their own id each, one open approval per exact call, single use, expiry, denial,
a bounded history with who decided what, and a store that survives a restart."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from xds_server.authz.approvals import Approval, ApprovalCall, ApprovalError, ApprovalState, ApprovalStore


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


CALL = ApprovalCall("github", "p/rules[1]", "executor", "alice", "merge_pr", {"repo": "acme/web", "pr": 7})
TTL = 900.0


def call(arguments: dict[str, object] | None = None) -> ApprovalCall:
    return CALL if arguments is None else ApprovalCall(*[*vars(CALL).values()][:5], arguments)


def request(store: ApprovalStore, arguments: dict[str, object] | None = None) -> Approval:
    return store.request(call(arguments), TTL)


def use(store: ApprovalStore, arguments: dict[str, object] | None = None) -> bool:
    return store.use(call(arguments)) is not None


def test_the_call_key_is_stable_and_call_specific() -> None:
    key = CALL.key
    assert (
        ApprovalCall("github", "p/rules[1]", "executor", "alice", "merge_pr", {"pr": 7, "repo": "acme/web"}).key == key
    )
    assert call({"repo": "acme/web", "pr": 8}).key != key
    assert ApprovalCall("github", "p/rules[1]", "executor", None, "merge_pr", CALL.arguments).key != key
    assert ApprovalCall("github", "p/rules[2]", "executor", "alice", "merge_pr", CALL.arguments).key != key


def test_request_creates_once_and_returns_the_same() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    first = request(store)
    assert first.state is ApprovalState.PENDING
    assert first.id.startswith("ap_") and len(first.id) == 3 + 16
    assert (first.created_at, first.expires_at) == (clock.now, clock.now + TTL)
    assert (first.backend, first.rule, first.agent, first.user, first.tool) == tuple(vars(CALL).values())[:5]
    clock.now += 100
    again = request(store)
    assert again == first  # same id, nothing refreshed
    assert request(store, {"repo": "acme/web", "pr": 8}).id != first.id


def test_approve_then_single_use_and_the_retry_gets_a_new_id() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    aid = request(store).id
    assert not use(store)  # pending is not usable
    clock.now += 60
    approved = store.approve(aid, by="bob")
    assert approved.state is ApprovalState.APPROVED
    assert (approved.decided_by, approved.decided_at, approved.expires_at) == ("bob", clock.now, clock.now + TTL)
    assert store.approve(aid, by="carol") == approved  # idempotent, expiry not extended
    clock.now += 5
    assert use(store)
    assert not use(store)
    used = store.status(aid)
    assert used is not None and (used.state, used.decided_by, used.used_at) == (ApprovalState.USED, "bob", clock.now)
    with pytest.raises(ApprovalError, match=f"approval {aid} was already used") as err:
        store.approve(aid, by="bob")
    assert err.value.kind == "used"
    # The same call again asks anew: a new approval, and the used one stays in the history.
    renewed = request(store)
    assert renewed.id != aid and (renewed.state, renewed.decided_by) == (ApprovalState.PENDING, None)
    assert [a.id for a in store.list(include_done=True)] == [renewed.id, aid]
    assert [a.id for a in store.list()] == [renewed.id]


def test_pending_expires_ttl_after_creation() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    aid = request(store).id
    clock.now += TTL
    assert store.status(aid).state is ApprovalState.EXPIRED  # type: ignore[union-attr]
    with pytest.raises(ApprovalError, match="has expired") as err:
        store.approve(aid, by="bob")
    assert err.value.kind == "expired"
    assert store.list() == []
    fresh = request(store)
    assert fresh.state is ApprovalState.PENDING and fresh.id != aid


def test_approved_expires_ttl_after_approval_if_unused() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    aid = request(store).id
    clock.now += TTL - 1
    store.approve(aid, by="bob")
    clock.now += TTL - 1  # still valid: counted from the approval
    assert store.status(aid).state is ApprovalState.APPROVED  # type: ignore[union-attr]
    clock.now += 1
    assert not use(store)
    assert store.status(aid).state is ApprovalState.EXPIRED  # type: ignore[union-attr]


def test_deny_stands_for_ttl_then_the_call_may_ask_again() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    aid = request(store).id
    denied = store.deny(aid, by="bob")
    assert (denied.state, denied.decided_by) == (ApprovalState.DENIED, "bob")
    assert not use(store)
    assert request(store) == denied
    with pytest.raises(ApprovalError, match="already denied by bob") as err:
        store.approve(aid, by="carol")
    assert err.value.kind == "denied"
    clock.now += TTL
    again = request(store)
    assert again.state is ApprovalState.PENDING and again.id != aid
    assert store.status(aid) == denied  # the denial is kept, with who made it


def test_an_approval_can_be_revoked_before_use() -> None:
    store = ApprovalStore(Clock())
    aid = request(store).id
    store.approve(aid, by="bob")
    assert store.deny(aid, by="carol").state is ApprovalState.DENIED
    assert not use(store)


def test_an_approval_is_never_spent_on_another_call() -> None:
    store = ApprovalStore(Clock())
    store.approve(request(store).id, by="bob")
    assert not use(store, {"repo": "acme/web", "pr": 8})
    assert use(store)


def test_unknown_ids() -> None:
    store = ApprovalStore(Clock())
    assert store.status("ap_0000000000000000") is None
    for action in (store.approve, store.deny):
        with pytest.raises(ApprovalError, match="no approval request ap_0000000000000000") as err:
            action("ap_0000000000000000", "bob")
        assert err.value.kind == "unknown"


def test_list_newest_first_and_done_ones_on_request() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    ids = []
    for pr in range(4):
        clock.now += 1
        ids.append(request(store, {"pr": pr}).id)
    store.approve(ids[1], by="bob")
    store.deny(ids[2], by="bob")
    store.approve(ids[3], by="bob")
    assert use(store, {"pr": 3})
    assert [a.id for a in store.list()] == [ids[1], ids[0]]
    assert [a.id for a in store.list(include_done=True)] == [ids[3], ids[2], ids[1], ids[0]]


def test_finished_entries_are_forgotten_after_the_history_time() -> None:
    clock = Clock()
    store = ApprovalStore(clock, history_s=3600)
    for pr in range(50):
        request(store, {"pr": pr})
    assert store.size() == 50
    clock.now += TTL + 3600
    assert store.list(include_done=True) == []
    assert store.size() == 0


def test_history_keeps_at_most_max_finished_the_newest() -> None:
    clock = Clock()
    store = ApprovalStore(clock, max_finished=10)
    for pr in range(30):
        clock.now += 1
        store.approve(request(store, {"pr": pr}).id, by="bob")
        assert use(store, {"pr": pr})
    clock.now += 2  # past the purge interval
    kept = store.list(include_done=True)
    assert len(kept) == 10 and [a.arguments["pr"] for a in kept] == list(range(29, 19, -1))
    assert all(a.decided_by == "bob" and a.state is ApprovalState.USED for a in kept)


def test_approvals_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "state" / "approvals.sqlite3"
    store = ApprovalStore(clock, path=path)
    used_id = request(store).id
    store.approve(used_id, by="bob")
    assert use(store)
    pending_id = request(store).id
    store.close()

    reopened = ApprovalStore(clock, path=path)
    assert [(a.id, a.state, a.decided_by) for a in reopened.list(include_done=True)] == [
        (pending_id, ApprovalState.PENDING, None),
        (used_id, ApprovalState.USED, "bob"),
    ]
    assert request(reopened).id == pending_id  # the open approval is still the call's
    reopened.approve(pending_id, by="carol")
    assert use(reopened)


def test_a_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "approvals.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema version 99"):
        ApprovalStore(path=path)


def test_to_json() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    approval = request(store)
    data = approval.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "id": approval.id,
        "backend": "github",
        "rule": "p/rules[1]",
        "agent": "executor",
        "user": "alice",
        "tool": "merge_pr",
        "arguments": {"repo": "acme/web", "pr": 7},
        "state": "pending",
        "created_at": clock.now,
        "expires_at": clock.now + TTL,
        "ttl_s": TTL,
        "decided_by": None,
        "decided_at": None,
        "used_at": None,
    }


def test_arguments_are_a_private_copy() -> None:
    arguments: dict[str, object] = {"labels": ["a"]}
    store = ApprovalStore(Clock())
    approval = request(store, arguments)
    arguments["labels"].append("b")  # type: ignore[attr-defined]
    assert approval.arguments["labels"] == ["a"]
    with pytest.raises(TypeError):
        approval.arguments["x"] = 1  # type: ignore[index]
