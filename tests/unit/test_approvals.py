"""Approvals: one id per exact call, single use, expiry of pending and approved ones, denial."""

from __future__ import annotations

import json

import pytest

from xds_server.authz.approvals import Approval, ApprovalError, ApprovalState, ApprovalStore, approval_id


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


CALL = ("github", "p/rules[1]", "executor", "alice", "merge_pr", {"repo": "acme/web", "pr": 7})
TTL = 900.0


def request(store: ApprovalStore, arguments: dict[str, object] | None = None) -> Approval:
    backend, rule, agent, user, tool, args = CALL
    return store.request(backend, rule, agent, user, tool, args if arguments is None else arguments, TTL)


def test_id_is_short_stable_and_call_specific() -> None:
    aid = approval_id(*CALL)
    assert aid.startswith("ap_") and len(aid) == 3 + 16
    assert approval_id("github", "p/rules[1]", "executor", "alice", "merge_pr", {"pr": 7, "repo": "acme/web"}) == aid
    assert approval_id("github", "p/rules[1]", "executor", "alice", "merge_pr", {"repo": "acme/web", "pr": 8}) != aid
    assert approval_id("github", "p/rules[1]", "executor", None, "merge_pr", CALL[5]) != aid
    assert approval_id("github", "p/rules[2]", "executor", "alice", "merge_pr", CALL[5]) != aid


def test_request_creates_once_and_returns_the_same() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    first = request(store)
    assert first.state is ApprovalState.PENDING
    assert (first.created_at, first.expires_at) == (clock.now, clock.now + TTL)
    assert (first.backend, first.rule, first.agent, first.user, first.tool) == CALL[:5]
    clock.now += 100
    again = request(store)
    assert again == first  # same id, nothing refreshed
    assert request(store, {"repo": "acme/web", "pr": 8}).id != first.id


def test_approve_then_single_use() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    aid = request(store).id
    assert not store.consume(aid)  # pending is not usable
    clock.now += 60
    approved = store.approve(aid, by="bob")
    assert approved.state is ApprovalState.APPROVED
    assert (approved.decided_by, approved.decided_at, approved.expires_at) == ("bob", clock.now, clock.now + TTL)
    assert store.approve(aid, by="carol") == approved  # idempotent, expiry not extended
    assert store.consume(aid)
    assert not store.consume(aid)
    assert store.status(aid).state is ApprovalState.USED  # type: ignore[union-attr]
    with pytest.raises(ApprovalError, match=f"approval {aid} was already used") as err:
        store.approve(aid, by="bob")
    assert err.value.kind == "used"
    # The same call again asks anew (same id, fresh pending request).
    renewed = request(store)
    assert (renewed.id, renewed.state, renewed.decided_by) == (aid, ApprovalState.PENDING, None)


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
    assert request(store).state is ApprovalState.PENDING


def test_approved_expires_ttl_after_approval_if_unused() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    aid = request(store).id
    clock.now += TTL - 1
    store.approve(aid, by="bob")
    clock.now += TTL - 1  # still valid: counted from the approval
    assert store.status(aid).state is ApprovalState.APPROVED  # type: ignore[union-attr]
    clock.now += 1
    assert not store.consume(aid)
    assert store.status(aid).state is ApprovalState.EXPIRED  # type: ignore[union-attr]


def test_deny_stands_for_ttl_then_the_call_may_ask_again() -> None:
    clock = Clock()
    store = ApprovalStore(clock)
    aid = request(store).id
    denied = store.deny(aid, by="bob")
    assert (denied.state, denied.decided_by) == (ApprovalState.DENIED, "bob")
    assert not store.consume(aid)
    assert request(store) == denied
    with pytest.raises(ApprovalError, match="already denied by bob") as err:
        store.approve(aid, by="carol")
    assert err.value.kind == "denied"
    clock.now += TTL
    assert request(store).state is ApprovalState.PENDING


def test_an_approval_can_be_revoked_before_use() -> None:
    store = ApprovalStore(Clock())
    aid = request(store).id
    store.approve(aid, by="bob")
    assert store.deny(aid, by="carol").state is ApprovalState.DENIED
    assert not store.consume(aid)


def test_unknown_ids() -> None:
    store = ApprovalStore(Clock())
    assert store.status("ap_0000000000000000") is None
    assert not store.consume("ap_0000000000000000")
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
    store.consume(ids[3])
    assert [a.id for a in store.list()] == [ids[1], ids[0]]
    assert [a.id for a in store.list(include_done=True)] == [ids[3], ids[2], ids[1], ids[0]]


def test_finished_entries_are_forgotten() -> None:
    clock = Clock()
    store = ApprovalStore(clock, history_s=3600)
    for pr in range(50):
        request(store, {"pr": pr})
    assert store.size() == 50
    clock.now += TTL + 3600
    assert store.list(include_done=True) == []
    assert store.size() == 0


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
