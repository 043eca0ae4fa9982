"""Service boundaries: gateway, predictor, engine and memory import only services.common and the
generated contracts (alise.v1), never each other, services.bench, services.cli or services.client.

Each service image copies only services/common and its own package (deploy/docker/Dockerfile), and
the .proto files are the only coupling between services (DESIGN.md section 1). services.common is
the base layer and imports no other services package. bench and cli are tools: they may import any.
Every import counts, module level or inside a function, absolute or relative, and
`importlib.import_module("services....")` with a literal name.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SERVICE_PACKAGES = ("gateway", "predictor", "engine", "memory")
BASE_PACKAGE = "common"
DYNAMIC_IMPORTERS = ("import_module", "__import__")


def _module_parts(path: pathlib.Path, root: pathlib.Path) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _package_parts(path: pathlib.Path, root: pathlib.Path) -> list[str]:
    """The package a relative import in `path` starts from (`from . import x` = level 1)."""
    return list(path.relative_to(root).parts[:-1])


def _imported_modules(path: pathlib.Path, root: pathlib.Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file, relative ones resolved; `from services
    import engine` counts as services.engine."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_parts(path, root)
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if name in DYNAMIC_IMPORTERS:
                found.append((node.lineno, node.args[0].value))
    return found


def boundary_violations(root: pathlib.Path) -> list[str]:
    """`file:line imports module` for every import across a service boundary under root/services."""
    violations = []
    for path in sorted((root / "services").rglob("*.py")):
        parts = _module_parts(path, root)
        if len(parts) < 2 or parts[1] not in (*SERVICE_PACKAGES, BASE_PACKAGE):
            continue
        allowed = {parts[1], BASE_PACKAGE}
        for line, module in _imported_modules(path, root):
            target = module.split(".")
            if target[0] == "services" and len(target) > 1 and target[1] not in allowed:
                violations.append(f"{path.relative_to(root)}:{line} imports {module}")
    return violations


def test_services_import_only_common_and_the_contracts():
    assert boundary_violations(REPO_ROOT) == []


def test_the_service_packages_exist():
    for name in (*SERVICE_PACKAGES, BASE_PACKAGE):
        assert (REPO_ROOT / "services" / name / "__init__.py").is_file(), name


def _tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = tmp_path / "services" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from services.cli import arg_types\n", "services.cli.arg_types"),
        ("def f():\n    from services.bench.results import build_report\n", "services.bench.results.build_report"),
        ("import services.memory.config\n", "services.memory.config"),
        ("from services import gateway\n", "services.gateway"),
        ("from ...client import errors\n", "services.client.errors"),
        ("import importlib\nimportlib.import_module('services.predictor.app')\n", "services.predictor.app"),
    ],
)
def test_a_crossing_import_is_reported(tmp_path, source, module):
    root = _tree(tmp_path, {"engine/kv_offload/bad.py": source})
    assert boundary_violations(root) == [f"services/engine/kv_offload/bad.py:{source.count(chr(10))} imports {module}"]


def test_own_package_common_contracts_and_tools_are_allowed(tmp_path):
    root = _tree(
        tmp_path,
        {
            "engine/good.py": "from services.engine import config\nfrom . import request\nfrom ..common import tls\n"
            "from services.common.contracts import engine_service_pb2\nfrom alise.v1 import common_pb2\n",
            "bench/tool.py": "from services.engine import app\nfrom services.memory import app as memory_app\n",
            "cli/tool.py": "from services.bench import results\nfrom services.gateway import app\n",
        },
    )
    assert boundary_violations(root) == []


def test_common_imports_no_service(tmp_path):
    root = _tree(tmp_path, {"common/bad.py": "from services.engine import config\n"})
    assert boundary_violations(root) == ["services/common/bad.py:1 imports services.engine.config"]
