"""deploy/k8s manifests, checked without a cluster.

- Every manifest parses; every container has native gRPC readiness and liveness probes on its own
  port and service name, resource requests, and args its service's own flag parser accepts.
- A Deployment and a Service per service; engines and predictors behind headless Services (the
  gateway resolves them to every pod); the engine requests a GPU; an HPA scales the predictor.
- Pods get longer to terminate than their --drain-seconds.
- `kubectl kustomize` renders the base and the CPU overlay (skipped without kubectl), and the output
  validates against the Kubernetes OpenAPI schemas (kubernetes-validate; skipped when not installed).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy_support import K8S_DIR, SERVICES, flag_value, parse_service_args

BASE_DIR = K8S_DIR / "base"
CPU_DIR = K8S_DIR / "cpu"
POD_NAME_PLACEHOLDER = "$(POD_NAME)"


def _documents(directory=BASE_DIR) -> list[dict]:
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _args(container: dict) -> list[str]:
    return [str(arg).replace(POD_NAME_PLACEHOLDER, "engine-7d9f-abcde") for arg in container["args"]]


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((BASE_DIR / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in BASE_DIR.glob("*.yaml")} - {"kustomization.yaml"}


def test_a_deployment_and_a_service_per_service():
    docs = _documents()
    assert set(_by_kind(docs, "Deployment")) == set(SERVICES)
    assert set(_by_kind(docs, "Service")) == set(SERVICES)


def test_every_container_has_grpc_readiness_and_liveness_probes_and_requests():
    for name, deployment in _by_kind(_documents(), "Deployment").items():
        container = _container(deployment)
        grpc_name, port = SERVICES[name]
        assert container["ports"][0] == {"name": "grpc", "containerPort": port}
        if name == "gateway":  # the OpenAI-compatible HTTP API on the port its --http-port names
            http_port = int(flag_value(_args(container), "--http-port"))
            assert container["ports"][1:] == [{"name": "http", "containerPort": http_port}]
        for probe_kind in ("readinessProbe", "livenessProbe"):
            probe = container.get(probe_kind)
            assert probe is not None, f"{name} has no {probe_kind}"
            assert probe["grpc"] == {"port": port, "service": grpc_name}, f"{name} {probe_kind}"
        startup = container.get("startupProbe")
        assert startup is None or startup["grpc"] == {"port": port, "service": grpc_name}
        requests = container["resources"]["requests"]
        assert "cpu" in requests and "memory" in requests, name


def test_container_args_are_accepted_by_each_services_parser_and_drain_in_time():
    for name, deployment in _by_kind(_documents(), "Deployment").items():
        args = _args(_container(deployment))
        parse_service_args(name, args)
        assert flag_value(args, "--port") == str(SERVICES[name][1])
        grace_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace_s > float(flag_value(args, "--drain-seconds")), name


def test_engines_and_predictors_sit_behind_headless_services_the_gateway_resolves():
    docs = _documents()
    services, deployments = _by_kind(docs, "Service"), _by_kind(docs, "Deployment")
    for name in ("engine", "predictor"):
        assert services[name]["spec"]["clusterIP"] == "None", f"{name} Service must be headless"
    for name, service in services.items():
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), f"{name} selects no pod"
        assert deployments[name]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        expected_ports = [SERVICES[name][1]] + ([8000] if name == "gateway" else [])
        assert [p["port"] for p in service["spec"]["ports"]] == expected_ports
    gateway = parse_service_args("gateway", _args(_container(deployments["gateway"])))
    assert gateway.engine_address == "engine:50052" and gateway.predictor_address == "predictor:50053"


def test_engine_requests_a_gpu_and_predictor_is_autoscaled():
    docs = _documents()
    engine = _container(_by_kind(docs, "Deployment")["engine"])
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert flag_value(_args(engine), "--device") == "cuda"
    (hpa,) = _by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "predictor"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    predictor = _container(_by_kind(docs, "Deployment")["predictor"])
    assert "cpu" in predictor["resources"]["requests"]  # the HPA's utilization is relative to it


def _kustomize(directory) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def test_cpu_overlay_renders_engines_without_gpus():
    engine = _container(_by_kind(_kustomize(CPU_DIR), "Deployment")["engine"])
    assert engine["image"].startswith("alise/engine-cpu:")
    assert "nvidia.com/gpu" not in str(engine["resources"])
    assert parse_service_args("engine", _args(engine)).device == "cpu"


@pytest.mark.parametrize("directory", [BASE_DIR, CPU_DIR], ids=["base", "cpu"])
def test_rendered_manifests_validate_against_the_kubernetes_schemas(directory):
    docs = _kustomize(directory)
    validate = pytest.importorskip("kubernetes_validate")
    for doc in docs:
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace") == "alise"
        validate.validate(doc, validate.latest_version(), strict=True)
