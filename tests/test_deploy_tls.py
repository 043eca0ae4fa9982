"""The TLS and API-key overlays of deploy/ (compose and Kubernetes), and the healthcheck's TLS mode.

Without Docker or a cluster: the overlays' gateway commands are parsed by the gateway's own flag
parser with the mounted secret paths pointed at a development PKI made here, and the container
healthcheck script is run against a real gateway serving TLS.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from services.cli.dev_certs import write_dev_pki
from services.common.tls import TlsFiles
from services.gateway import app
from services.gateway.auth import ApiKeys
from services.gateway.config import GatewayConfig
from tests.deploy_support import COMPOSE_SCHEMA, DEPLOY_DIR, DOCKER_DIR, K8S_DIR, interpolate, parse_service_args
from tests.gateway_fakes import FakeEngine, start_fake_engine

COMPOSE_TLS = DEPLOY_DIR / "docker-compose.tls.yml"
TLS_FLAGS = ("--tls-cert", "--tls-key", "--api-key-file")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("secrets")
    write_dev_pki(directory)
    return directory


def _with_files(argv: list[str], mounts: dict[str, str]) -> list[str]:
    return [mounts.get(arg, arg) for arg in argv]


def test_compose_overlay_is_the_base_gateway_command_plus_tls_and_keys(pki):
    base = yaml.safe_load((DEPLOY_DIR / "docker-compose.yml").read_text())["services"]["gateway"]
    overlay_file = yaml.safe_load(COMPOSE_TLS.read_text())
    overlay = overlay_file["services"]["gateway"]
    base_command = [interpolate(str(arg)) for arg in base["command"]]
    command = [interpolate(str(arg)) for arg in overlay["command"]]
    assert command[: len(base_command)] == base_command, "the overlay's command must extend the base one"
    secrets = overlay_file["secrets"]
    assert set(overlay["secrets"]) == set(secrets)
    mounts = {f"/run/secrets/{name}": str(pki / entry["file"].removeprefix("./secrets/")) for name, entry in secrets.items()}
    config = parse_service_args("gateway", _with_files(command, mounts))
    assert config.tls is not None and config.tls.ca_path == "" and config.api_key_file
    assert ApiKeys.load(config.api_keys, config.api_key_file).enabled
    healthcheck = overlay["healthcheck"]["test"]
    assert healthcheck[:5] == base["healthcheck"]["test"][:5] and "--tls-ca" in healthcheck
    assert healthcheck[healthcheck.index("--tls-ca") + 1] in mounts


def test_compose_overlay_validates_against_the_compose_spec():
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"compose schema not found: {COMPOSE_SCHEMA}")
    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = list(validator.iter_errors(yaml.safe_load(COMPOSE_TLS.read_text())))
    assert not errors, [e.message for e in errors]


def test_kubernetes_overlay_mounts_the_secrets_and_probes_over_tls(pki):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR / "tls")], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    (gateway,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway"]
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secrets = {volume["name"]: volume["secret"]["secretName"] for volume in pod["volumes"]}
    assert secrets == {"tls": "alise-gateway-tls", "api-keys": "alise-api-keys"}
    mounts = {
        "/etc/alise/tls/tls.crt": str(pki / "gateway.pem"), "/etc/alise/tls/tls.key": str(pki / "gateway.key"),
        "/etc/alise/tls/ca.crt": str(pki / "ca.pem"), "/etc/alise/api-keys/api_keys.txt": str(pki / "api_keys.txt"),
    }
    config = parse_service_args("gateway", _with_files(container["args"], mounts))
    assert config.tls is not None and config.api_key_file
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:4] == ["python", "/usr/local/bin/alise-healthcheck", "127.0.0.1:50051", "alise.v1.GatewayService"]
        assert command[command.index("--tls-ca") + 1] in mounts


async def _healthcheck(*args: str) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(DOCKER_DIR / "grpc_healthcheck.py"), *args, "--timeout-s", "3",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_healthcheck_script_speaks_tls(pki):
    engine_server = await start_fake_engine(FakeEngine())
    tls = TlsFiles(str(pki / "gateway.pem"), str(pki / "gateway.key"))
    handle = await app.start(GatewayConfig(engine_address=engine_server.address, port=0, api_keys=("k",), tls=tls))
    try:
        service = "alise.v1.GatewayService"
        assert await _healthcheck(handle.address, service, "--tls-ca", str(pki / "ca.pem")) == 0
        assert await _healthcheck(handle.address, service, "--tls-ca", str(pki / "ca.pem"),
                                  "--tls-server-name", "alise-internal") == 0
        assert await _healthcheck(handle.address, service) == 1  # plaintext against TLS
        assert await _healthcheck(handle.address, service, "--tls-ca", str(pki / "ca.pem"),
                                  "--tls-server-name", "someone-else") == 1
    finally:
        await handle.stop(0)
        await engine_server.stop(0)
