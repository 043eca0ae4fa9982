"""Only the gateway is reachable from outside the stack (deploy/README.md, "Network exposure").

- Compose: of alise's services only the gateway publishes host ports (gRPC 50051, HTTP 8000) in
  every compose file; engine, predictor and memory only `expose` their metrics ports to the
  compose network. The monitoring overlay adds Prometheus and Grafana, nothing else.
- Kubernetes: no Service is NodePort or LoadBalancer (the operator exposes the gateway on purpose);
  engine and predictor are headless, memory ClusterIP; a NetworkPolicy lets only the calling
  component reach each internal gRPC port.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy_support import DEPLOY_DIR, K8S_DIR, SERVICES, interpolate

COMPOSE_FILES = [
    "docker-compose.yml",
    "docker-compose.gpu.yml",
    "docker-compose.tls.yml",
    "docker-compose.monitoring.yml",
]
MONITORING = {"prometheus", "grafana"}
# Which component calls each internal service's gRPC port.
CALLERS = {"engine": "gateway", "predictor": "gateway", "memory": "engine"}


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_publishes_only_the_gateways_ports(name):
    services = yaml.safe_load((DEPLOY_DIR / name).read_text())["services"]
    publishing = {service for service, spec in services.items() if spec.get("ports")}
    allowed = {"gateway"} | (MONITORING if name == "docker-compose.monitoring.yml" else set())
    assert publishing <= allowed, f"{name}: {publishing - allowed} publish host ports"
    if "ports" in services.get("gateway", {}):
        container_ports = {interpolate(str(entry)).rsplit(":", 1)[1] for entry in services["gateway"]["ports"]}
        assert container_ports == {"50051", "8000"}
    for service, spec in services.items():
        if service in SERVICES and service != "gateway":
            for port in spec.get("expose", []):
                assert str(port) in {"9102", "9103", "9104"}, f"{name}: {service} exposes {port}"


def _kustomize(directory) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=True
    )
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.mark.parametrize("overlay", ["base", "cpu", "tls"])
def test_kubernetes_keeps_internal_services_inside_the_cluster(overlay):
    docs = _kustomize(K8S_DIR / overlay)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name, service in services.items():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", f"{name} is reachable from outside the cluster"
    assert services["engine"]["spec"]["clusterIP"] == "None" and services["predictor"]["spec"]["clusterIP"] == "None"
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    assert set(policies) == set(CALLERS)
    for name, caller in CALLERS.items():
        spec = policies[name]["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == name
        assert spec["policyTypes"] == ["Ingress"]
        grpc_rules = [rule for rule in spec["ingress"] if {"port": "grpc"} in rule["ports"]]
        assert len(grpc_rules) == 1, f"{name}: one rule for its gRPC port"
        (source,) = grpc_rules[0]["from"]
        assert source["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == caller
        open_rules = [rule for rule in spec["ingress"] if "from" not in rule]
        assert all(rule["ports"] == [{"port": "metrics"}] for rule in open_rules), f"{name}: only /metrics is open"
