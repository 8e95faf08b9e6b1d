"""The approvals API's bearer token: the API (every route but /healthz) and when `serve` asks for one."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from xds_server.authz.approvals import ApprovalCall, ApprovalStore
from xds_server.authz.approvals_http import build_app
from xds_server.cli.serve import APPROVALS_TOKEN_ENV, _approvals_token

TOKEN = "approvals-token-0123456789"


def test_every_route_but_healthz_needs_the_token() -> None:
    store = ApprovalStore()
    approval = store.request(ApprovalCall("github", "r1", "triage", None, "delete_repo", {}), ttl_s=60)
    client = TestClient(build_app(store, TOKEN))
    for method, path in (("GET", "/approvals"), ("GET", f"/approvals/{approval.id}"),
                         ("POST", f"/approvals/{approval.id}/approve")):  # fmt: skip
        for given in (None, "Bearer wrong-token-0123456789", TOKEN, f"Basic {TOKEN}"):
            headers = {"authorization": given} if given is not None else {}
            refused = client.request(method, path, headers=headers)
            assert refused.status_code == 401 and refused.json() == {"error": "a valid bearer token is required"}
            assert refused.headers["www-authenticate"] == 'Bearer realm="agentxds-approvals"'
    assert store.status(approval.id).state.value == "pending"  # never approved by a refused request
    approved = client.post(f"/approvals/{approval.id}/approve", headers={"authorization": f"Bearer {TOKEN}"},
                           json={"by": "alice"})  # fmt: skip
    assert approved.status_code == 200 and approved.json()["state"] == "approved"
    assert client.get("/healthz").text == "ok"  # probes need no token


def test_without_a_token_the_api_is_open_as_before() -> None:
    assert TestClient(build_app(ApprovalStore())).get("/approvals").status_code == 200


def test_only_approve_and_deny_decide() -> None:
    store = ApprovalStore()
    approval = store.request(ApprovalCall("github", "r1", "triage", None, "delete_repo", {}), ttl_s=60)
    answer = TestClient(build_app(store)).post(f"/approvals/{approval.id}/approved")
    assert answer.status_code == 404 and "approve or deny" in answer.json()["error"]
    assert store.status(approval.id).state.value == "pending"  # not denied by a typo


def _args(host: str, file: Path | None = None) -> Namespace:
    return Namespace(approvals_host=host, approvals_token_file=file)


def test_serve_asks_for_a_token_off_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(APPROVALS_TOKEN_ENV, raising=False)
    assert _approvals_token(_args("127.0.0.1")) is None and _approvals_token(_args("::1")) is None
    assert _approvals_token(_args("localhost")) is None
    for host in ("0.0.0.0", "10.0.0.5", "approvals.internal"):
        with pytest.raises(SystemExit, match="needs a token"):
            _approvals_token(_args(host))
    monkeypatch.setenv(APPROVALS_TOKEN_ENV, f"  {TOKEN}\n")
    assert _approvals_token(_args("0.0.0.0")) == TOKEN
    (tmp_path / "token").write_text("short\n")
    with pytest.raises(SystemExit, match="at least 16 characters"):
        _approvals_token(_args("127.0.0.1", tmp_path / "token"))  # the file wins over the variable
