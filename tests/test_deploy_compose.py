"""deploy/docker-compose.yml and its GPU override, checked without a Docker engine.

- Both files validate against the Compose Specification schema (../shared/schemas/compose-spec.json;
  skipped when absent).
- Every service: a grpc.health.v1 healthcheck on its own port and service name, restart on failure,
  a stop grace period longer than its --drain-seconds, and a command its own flag parser accepts.
- Startup order waits on healthy dependencies; predictor and engine have several replicas and
  publish no host port (so `--scale` works); the gateway reaches them by compose service name.
- The GPU override runs the CUDA image with an NVIDIA device reservation.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.deploy_support import (
    COMPOSE_SCHEMA,
    DEPLOY_DIR,
    REPO_ROOT,
    SERVICES,
    dockerfile_stages,
    duration_s,
    flag_value,
    interpolate,
    parse_service_args,
)

BASE = DEPLOY_DIR / "docker-compose.yml"
GPU = DEPLOY_DIR / "docker-compose.gpu.yml"
SCALED = ("engine", "predictor")


def _load(path):
    return yaml.safe_load(path.read_text())


def _command(service: dict) -> list[str]:
    return [interpolate(str(arg)) for arg in service["command"]]


@pytest.mark.parametrize("path", [BASE, GPU], ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_spec(path):
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"compose schema not found: {COMPOSE_SCHEMA}")
    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(_load(path)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_every_service_is_health_checked_restarted_and_drains_before_it_is_killed():
    services = _load(BASE)["services"]
    assert set(services) == set(SERVICES)
    for name, service in services.items():
        grpc_name, port = SERVICES[name]
        command = _command(service)
        assert flag_value(command, "--port") == str(port) and flag_value(command, "--host") == "0.0.0.0"
        test = service["healthcheck"]["test"]
        assert test == ["CMD", "python", "/usr/local/bin/alise-healthcheck", f"127.0.0.1:{port}", grpc_name], name
        assert duration_s(service["healthcheck"]["timeout"]) < duration_s(service["healthcheck"]["interval"])
        assert service["restart"] == "on-failure", name
        drain_s = float(flag_value(command, "--drain-seconds"))
        assert duration_s(service["stop_grace_period"]) > drain_s, f"{name}: grace period <= drain time"


def test_every_command_is_accepted_by_the_services_own_flag_parser():
    for name, service in _load(BASE)["services"].items():
        config = parse_service_args(name, _command(service))  # fails the test on a rejected flag
        assert config.port == SERVICES[name][1], f"{name} would listen on {config.port}"


def test_dependencies_wait_for_healthy_services():
    services = _load(BASE)["services"]
    expected = {"engine": {"memory"}, "gateway": {"engine", "predictor"}}
    for name, needed in expected.items():
        depends_on = services[name]["depends_on"]
        assert set(depends_on) == needed
        assert all(d["condition"] == "service_healthy" for d in depends_on.values())


def test_engine_and_predictor_scale_and_the_gateway_finds_them_by_service_name():
    services = _load(BASE)["services"]
    for name in SCALED:
        assert services[name]["deploy"]["replicas"] >= 2
        assert "ports" not in services[name], f"{name} publishes a host port: --scale would collide"
    gateway = parse_service_args("gateway", _command(services["gateway"]))
    memory_address = flag_value(_command(services["engine"]), "--memory-address")
    assert gateway.engine_address == f"engine:{SERVICES['engine'][1]}"
    assert gateway.predictor_address == f"predictor:{SERVICES['predictor'][1]}"
    assert memory_address == f"memory:{SERVICES['memory'][1]}"
    assert gateway.engine_routing == "least-work"


def test_build_targets_exist_in_their_dockerfiles():
    for path in (BASE, GPU):
        for name, service in _load(path)["services"].items():
            build = service.get("build")
            if build is None:  # an override that only changes settings (the GPU file's memory)
                assert path is GPU and name in _load(BASE)["services"], name
                continue
            dockerfile = (path.parent / build["context"] / build["dockerfile"]).resolve()
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
            assert (path.parent / build["context"]).resolve() == REPO_ROOT
            assert build["target"] in dockerfile_stages(dockerfile), f"{name}: no stage {build['target']}"


def test_gpu_override_pins_engines_to_gpus_with_the_cuda_image():
    services = _load(GPU)["services"]
    gpu_engines = [service for name, service in services.items() if name.startswith("engine")]
    assert len(gpu_engines) == 2
    assert services["engine-gpu1"]["networks"]["default"]["aliases"] == ["engine"]  # found as `engine`
    device_ids = []
    for service in gpu_engines:
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        device_ids += [interpolate(d) for d in device["device_ids"]]
        assert service["build"]["dockerfile"].endswith("Dockerfile.engine-cuda")
        config = parse_service_args("engine", _command(service))
        assert config.device == "cuda"
        assert duration_s(service["stop_grace_period"]) > config.drain_s
    assert len(set(device_ids)) == len(device_ids), "two engines share a GPU"
