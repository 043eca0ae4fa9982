"""The monitoring files in deploy/, checked without Docker, Prometheus or Grafana: every metrics
port a service is started with is exposed, annotated and scraped where the others expect it, and
the dashboard is well formed and selects the scrape config's job names."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy_support import COMPOSE_SCHEMA, DEPLOY_DIR, K8S_DIR, flag_value, interpolate

PROMETHEUS = DEPLOY_DIR / "prometheus" / "prometheus.yml"
PROMETHEUS_K8S = DEPLOY_DIR / "prometheus" / "prometheus-kubernetes.yml"
MONITORING = DEPLOY_DIR / "docker-compose.monitoring.yml"
DASHBOARD = DEPLOY_DIR / "grafana" / "alise-dashboard.json"
# Service -> the flag that sets the port its /metrics is served on.
METRICS_FLAG = {
    "gateway": "--http-port",
    "engine": "--metrics-port",
    "predictor": "--metrics-port",
    "memory": "--metrics-port",
}


def _yaml(path):
    return yaml.safe_load(path.read_text())


def _metrics_port(service: str, argv: list[str]) -> int:
    """The port named on the command line (test_deploy_compose/k8s check that the parser accepts it)."""
    value = flag_value(argv, METRICS_FLAG[service])
    assert value is not None, f"{service}: no {METRICS_FLAG[service]} (its /metrics port would be implicit)"
    return int(value)


def _compose_ports() -> dict[str, int]:
    services = _yaml(DEPLOY_DIR / "docker-compose.yml")["services"]
    return {
        name: _metrics_port(name, [interpolate(str(a)) for a in service["command"]])
        for name, service in services.items()
    }


def _scrape_targets() -> dict[str, tuple[str, int]]:
    """job -> (host name, port) of deploy/prometheus/prometheus.yml."""
    targets = {}
    for job in _yaml(PROMETHEUS)["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        if "dns_sd_configs" in job:
            (sd,) = job["dns_sd_configs"]
            (name,) = sd["names"]
            targets[job["job_name"]] = (name, sd["port"])
        else:
            ((target,),) = [c["targets"] for c in job["static_configs"]]
            name, port = target.split(":")
            targets[job["job_name"]] = (name, int(port))
    return targets


def test_prometheus_scrapes_every_compose_service_on_the_port_it_serves_metrics_on():
    ports = _compose_ports()
    assert _scrape_targets() == {f"alise-{name}": (name, port) for name, port in ports.items()}


def test_compose_services_expose_their_metrics_ports():
    services = _yaml(DEPLOY_DIR / "docker-compose.yml")["services"]
    for name, port in _compose_ports().items():
        exposed = {str(p) for p in services[name].get("expose", [])}
        published = {interpolate(str(p)).split(":")[-1] for p in services[name].get("ports", [])}
        assert str(port) in exposed | published, f"{name} does not expose {port}"
    gpu = _yaml(DEPLOY_DIR / "docker-compose.gpu.yml")
    assert flag_value([str(a) for a in gpu["x-engine-gpu-command"]], "--metrics-port") == str(
        _compose_ports()["engine"]
    )
    assert gpu["x-engine-gpu"]["expose"] == [str(_compose_ports()["engine"])]


def test_k8s_pods_are_annotated_with_the_port_their_container_serves_metrics_on():
    for path in sorted((K8S_DIR / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] != "Deployment":
                continue
            name = doc["metadata"]["name"]
            template = doc["spec"]["template"]
            annotations = template["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
            (container,) = template["spec"]["containers"]
            args = [str(a).replace("$(POD_NAME)", "pod-1") for a in container["args"]]
            port = _metrics_port(name, args)
            assert annotations["prometheus.io/port"] == str(port), name
            assert port in {p["containerPort"] for p in container["ports"]}, name


def test_kubernetes_scrape_config_names_jobs_like_the_compose_one():
    (job,) = _yaml(PROMETHEUS_K8S)["scrape_configs"]
    relabels = {tuple(r.get("source_labels", [])): r for r in job["relabel_configs"]}
    component = relabels[("__meta_kubernetes_pod_label_app_kubernetes_io_component",)]
    assert (component["target_label"], component["replacement"]) == ("job", "alise-$1")
    keep = relabels[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    assert (keep["action"], keep["regex"]) == ("keep", "true")


def test_monitoring_override_validates_and_mounts_files_that_exist():
    monitoring = _yaml(MONITORING)
    if COMPOSE_SCHEMA.is_file():
        import jsonschema

        validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
        errors = list(validator.iter_errors(monitoring))
        assert not errors, [e.message for e in errors]
    for service in monitoring["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY_DIR / source).exists(), source
    datasource = _yaml(DEPLOY_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in monitoring["services"]
    provider = _yaml(DEPLOY_DIR / "grafana" / "provisioning" / "dashboards" / "alise.yml")["providers"][0]
    mounted = [v for v in monitoring["services"]["grafana"]["volumes"] if "alise-dashboard.json" in v]
    assert mounted and mounted[0].split(":")[1].startswith(provider["options"]["path"] + "/")


def test_dashboard_panels_are_well_formed_and_select_the_scrape_jobs():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(re.search(r"alise:[a-z_]+", t["expr"]) for t in panel["targets"]), panel[
            "title"
        ]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    jobs = set(_scrape_targets())
    assert {variables["gateway_job"]["query"], variables["engine_job"]["query"]} <= jobs
    titles = " ".join(p["title"].lower() for p in panels)
    for needed in (
        "request rate",
        "running",
        "kv cache",
        "time to first token",
        "inter-token",
        "end-to-end",
        "preemptions",
        "swaps",
        "kendall tau",
        "fallbacks",
    ):
        assert needed in titles, needed


@pytest.mark.parametrize("path", [PROMETHEUS, PROMETHEUS_K8S], ids=lambda p: p.name)
def test_scrape_intervals_leave_room_for_the_timeout(path):
    settings = _yaml(path)["global"]
    assert int(settings["scrape_timeout"].rstrip("s")) < int(settings["scrape_interval"].rstrip("s"))
