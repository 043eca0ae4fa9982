"""The TLS overlays of deploy/ (compose and Kubernetes), and the healthcheck's TLS mode.

Without Docker or a cluster: every service's overlay command is parsed by the service's own flag
parser with the mounted secret paths pointed at a development PKI made here (so each one would
start with mutual TLS: its own certificate and key, the CA, a client certificate required by the
internal servers), the files validate against the Compose Specification and the Kubernetes OpenAPI
schemas, and the container healthcheck script is run against real servers speaking TLS and mTLS.
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
from services.memory import app as memory_app
from services.memory.config import MemoryConfig
from tests.deploy_support import (
    COMPOSE_SCHEMA,
    DEPLOY_DIR,
    DOCKER_DIR,
    K8S_DIR,
    SERVICES,
    flag_value,
    interpolate,
    parse_service_args,
)
from tests.gateway_fakes import FakeEngine, start_fake_engine

COMPOSE_TLS = DEPLOY_DIR / "docker-compose.tls.yml"
INTERNAL = ("engine", "predictor", "memory")
PEER_NAME = "alise-internal"
HEALTHCHECK = "/usr/local/bin/alise-healthcheck"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("secrets")
    write_dev_pki(directory)
    return directory


def _with_files(argv: list[str], mounts: dict[str, str]) -> list[str]:
    return [mounts.get(arg, arg) for arg in argv]


def _compose_mounts(pki) -> dict[str, str]:
    secrets = yaml.safe_load(COMPOSE_TLS.read_text())["secrets"]
    return {
        f"/run/secrets/{name}": str(pki / entry["file"].removeprefix("./secrets/")) for name, entry in secrets.items()
    }


def _assert_mutual_tls(name: str, config, mounts: dict[str, str], pki) -> None:
    """The parsed config serves and dials with the service's own files and the CA."""
    tls = config.tls
    assert tls is not None, f"{name}: no TLS"
    assert (tls.cert_path, tls.key_path, tls.ca_path) == (
        str(pki / f"{name}.pem"),
        str(pki / f"{name}.key"),
        str(pki / "ca.pem"),
    ), name
    assert tls.verifies_peers, f"{name}: without --tls-ca its server would not require client certificates"
    if name in ("gateway", "engine"):  # they dial peers (engines/predictors by IP; memory)
        assert tls.peer_name == PEER_NAME, name


def test_compose_overlay_gives_every_service_its_certificate_and_the_ca(pki):
    base = yaml.safe_load((DEPLOY_DIR / "docker-compose.yml").read_text())["services"]
    overlay_file = yaml.safe_load(COMPOSE_TLS.read_text())
    mounts = _compose_mounts(pki)
    assert set(overlay_file["services"]) == set(SERVICES)
    for name, overlay in overlay_file["services"].items():
        base_command = [interpolate(str(arg)) for arg in base[name]["command"]]
        command = [interpolate(str(arg)) for arg in overlay["command"]]
        assert command[: len(base_command)] == base_command, f"{name}: the overlay's command must extend the base one"
        assert set(overlay["secrets"]) <= set(overlay_file["secrets"]), name
        used = {arg for arg in command + overlay["healthcheck"]["test"] if arg.startswith("/run/secrets/")}
        assert used == {f"/run/secrets/{secret}" for secret in overlay["secrets"]}, f"{name}: mounts what it uses"
        config = parse_service_args(name, _with_files(command, mounts))
        _assert_mutual_tls(name, config, mounts, pki)
        healthcheck = overlay["healthcheck"]["test"]
        assert healthcheck[:5] == base[name]["healthcheck"]["test"][:5]
        assert flag_value(healthcheck, "--tls-ca") == "/run/secrets/alise-ca"
        if name in INTERNAL:  # their servers require a client certificate: the check presents the service's own
            assert flag_value(healthcheck, "--tls-cert") == f"/run/secrets/{name}-cert"
            assert flag_value(healthcheck, "--tls-key") == f"/run/secrets/{name}-key"
    gateway_command = [interpolate(str(arg)) for arg in overlay_file["services"]["gateway"]["command"]]
    gateway = parse_service_args("gateway", _with_files(gateway_command, mounts))
    assert ApiKeys.load(gateway.api_keys, gateway.api_key_file).enabled


def test_compose_overlay_validates_against_the_compose_spec():
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"compose schema not found: {COMPOSE_SCHEMA}")
    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = list(validator.iter_errors(yaml.safe_load(COMPOSE_TLS.read_text())))
    assert not errors, [e.message for e in errors]


def _kustomize_tls() -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR / "tls")], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def test_kubernetes_overlay_mounts_each_services_secret_and_probes_over_tls(pki):
    deployments = {d["metadata"]["name"]: d for d in _kustomize_tls() if d["kind"] == "Deployment"}
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        expected = {"tls": f"alise-{name}-tls"} | ({"api-keys": "alise-api-keys"} if name == "gateway" else {})
        assert secrets == expected, name
        assert all(v["secret"]["defaultMode"] == 0o440 for v in pod["volumes"] if "secret" in v)
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"], "the user reads its keys"
        mounts = {
            "/etc/alise/tls/tls.crt": str(pki / f"{name}.pem"),
            "/etc/alise/tls/tls.key": str(pki / f"{name}.key"),
            "/etc/alise/tls/ca.crt": str(pki / "ca.pem"),
            "/etc/alise/api-keys/api_keys.txt": str(pki / "api_keys.txt"),
        }
        args = [str(a).replace("$(POD_NAME)", "engine-abc") for a in container["args"]]
        _assert_mutual_tls(name, parse_service_args(name, _with_files(args, mounts)), mounts, pki)
        probes = [key for key in container if key.endswith("Probe")]
        assert {"readinessProbe", "livenessProbe"} <= set(probes)
        for probe in probes:  # native gRPC probes cannot speak TLS
            command = container[probe]["exec"]["command"]
            assert command[:4] == ["python", HEALTHCHECK, f"127.0.0.1:{SERVICES[name][1]}", SERVICES[name][0]]
            assert flag_value(command, "--tls-ca") == "/etc/alise/tls/ca.crt"
            assert flag_value(command, "--tls-server-name") == PEER_NAME
            if name in INTERNAL:
                assert flag_value(command, "--tls-cert") == "/etc/alise/tls/tls.crt", f"{name} {probe}"


def test_kubernetes_overlay_validates_against_the_kubernetes_schemas():
    docs = _kustomize_tls()
    validate = pytest.importorskip("kubernetes_validate")
    version = validate.latest_version()
    validated = {(doc["kind"], doc["metadata"]["name"]): validate.validate(doc, version, strict=True) for doc in docs}
    major_minor = ".".join(version.split(".")[:2])  # validate() answers the schema version it used as major.minor
    assert set(validated.values()) == {major_minor}, "every document checked against the latest schemas"
    kinds = {kind for kind, _ in validated}
    assert kinds == {
        "Namespace",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    assert {name for kind, name in validated if kind == "Deployment"} == set(SERVICES)
    assert len(validated) == len(docs), "no two documents share a kind and name"


async def _healthcheck(*args: str) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DOCKER_DIR / "grpc_healthcheck.py"),
        *args,
        "--timeout-s",
        "3",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_healthcheck_script_speaks_tls(pki):
    engine_server = await start_fake_engine(FakeEngine())
    tls = TlsFiles(str(pki / "gateway.pem"), str(pki / "gateway.key"))
    handle = await app.start(GatewayConfig(engine_address=engine_server.address, port=0, api_keys=("k",), tls=tls))
    try:
        service = "alise.v1.GatewayService"
        assert await _healthcheck(handle.address, service, "--tls-ca", str(pki / "ca.pem")) == 0
        assert (
            await _healthcheck(handle.address, service, "--tls-ca", str(pki / "ca.pem"), "--tls-server-name", PEER_NAME)
            == 0
        )
        assert await _healthcheck(handle.address, service) == 1  # plaintext against TLS
        assert (
            await _healthcheck(
                handle.address, service, "--tls-ca", str(pki / "ca.pem"), "--tls-server-name", "someone-else"
            )
            == 1
        )
    finally:
        await handle.stop(0)
        await engine_server.stop(0)


async def test_healthcheck_script_presents_a_client_certificate_to_a_mutual_tls_service(pki):
    """What the overlays' internal probes run, against the real memory service started with their flags."""
    config = MemoryConfig.from_args(
        [
            "--port",
            "0",
            "--host-tier-capacity-bytes",
            "0",
            "--tls-cert",
            str(pki / "memory.pem"),
            "--tls-key",
            str(pki / "memory.key"),
            "--tls-ca",
            str(pki / "ca.pem"),
        ]
    )
    memory = await memory_app.start(config)
    try:
        check = (
            memory.address,
            "alise.v1.MemoryService",
            "--tls-ca",
            str(pki / "ca.pem"),
            "--tls-server-name",
            PEER_NAME,
        )
        assert (
            await _healthcheck(*check, "--tls-cert", str(pki / "memory.pem"), "--tls-key", str(pki / "memory.key")) == 0
        )
        assert await _healthcheck(*check) == 1  # no client certificate: refused in the handshake
    finally:
        await memory.stop(0)
