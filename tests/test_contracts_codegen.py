"""Contracts are generated at install only: importing them never runs protoc, and a missing or stale
alise/v1 (protos/ changed since generation) raises an error that names the fix command."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

from services.common import codegen

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of protos/ and an empty output root in tmp_path, with codegen pointed at them."""
    shutil.copytree(codegen.PROTO_ROOT, tmp_path / "protos")
    monkeypatch.setattr(codegen, "PROTO_ROOT", tmp_path / "protos")
    monkeypatch.setattr(codegen, "OUTPUT_ROOT", tmp_path)
    monkeypatch.setattr(codegen, "PACKAGE_DIR", tmp_path / "alise" / "v1")
    monkeypatch.setattr(codegen, "STAMP_FILE", tmp_path / "alise" / "v1" / "generated_from.json")
    return tmp_path


def test_the_installed_contracts_match_the_protos():
    codegen.check()


def test_missing_package_names_the_fix(tree):
    with pytest.raises(codegen.ContractsNotGenerated, match="python -m services.common.codegen"):
        codegen.check()


def test_fresh_generation_passes_and_a_proto_edit_makes_it_stale(tree):
    pytest.importorskip("grpc_tools")
    codegen.generate()
    codegen.check()
    proto = tree / "protos" / "alise" / "v1" / "common.proto"
    proto.write_text(proto.read_text() + "\n// a comment changes the contract's bytes\n")
    with pytest.raises(codegen.ContractsNotGenerated, match=r"stale.*python -m services\.common\.codegen"):
        codegen.check()
    codegen.generate()
    codegen.check()


def test_a_missing_module_or_stamp_is_refused(tree):
    pytest.importorskip("grpc_tools")
    codegen.generate()
    (tree / "alise" / "v1" / "engine_service_pb2_grpc.py").unlink()
    with pytest.raises(codegen.ContractsNotGenerated, match="engine_service_pb2_grpc.py"):
        codegen.check()
    codegen.generate()
    codegen.STAMP_FILE.unlink()
    with pytest.raises(codegen.ContractsNotGenerated, match="recorded sha256 none"):
        codegen.check()


def test_without_protos_only_presence_is_checked(tree):
    """A service image keeps the generated package and drops protos/: nothing to compare against."""
    pytest.importorskip("grpc_tools")
    codegen.generate()
    codegen.STAMP_FILE.unlink()
    shutil.rmtree(tree / "protos")
    codegen.check()


def test_importing_the_contracts_never_runs_protoc():
    """With grpc_tools unimportable (as on the GPU machine and in images) the import still works."""
    code = "import sys; sys.modules['grpc_tools'] = None; import services.common.contracts as c; print(c.common_pb2)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "common_pb2" in result.stdout
