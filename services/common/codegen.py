"""Generates the Python protobuf/gRPC modules from protos/ into the package `alise.v1`.

Why a package at the repository root: generated modules import each other by their proto package
path (`from alise.v1 import common_pb2`), so the output is laid out as that package instead of
patching imports. The output is not committed; the install step (and, as a fallback, the first
import of `services.common.contracts`) runs this.

    protos/alise/v1/x.proto  --protoc-->  alise/v1/x_pb2.py, x_pb2_grpc.py, x_pb2.pyi
"""

from __future__ import annotations

import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
OUTPUT_ROOT = REPO_ROOT
PACKAGE_DIR = OUTPUT_ROOT / "alise" / "v1"


def proto_files() -> list[pathlib.Path]:
    """All .proto files of the alise.v1 package, sorted for a stable build."""
    return sorted((PROTO_ROOT / "alise" / "v1").glob("*.proto"))


def is_stale() -> bool:
    """True when any generated module is missing or older than its .proto source."""
    for proto in proto_files():
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            generated = PACKAGE_DIR / (proto.stem + suffix)
            if not generated.exists() or generated.stat().st_mtime < proto.stat().st_mtime:
                return True
    return False


def generate() -> None:
    """Runs protoc (from grpcio-tools) over every proto; raises RuntimeError on failure."""
    from grpc_tools import protoc  # imported here: only the install step needs grpcio-tools
    import importlib.resources

    include_dir = str(importlib.resources.files("grpc_tools") / "_proto")
    PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include_dir}",
        f"--python_out={OUTPUT_ROOT}",
        f"--pyi_out={OUTPUT_ROOT}",
        f"--grpc_python_out={OUTPUT_ROOT}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_ROOT}")
    for package in (OUTPUT_ROOT / "alise", PACKAGE_DIR):
        (package / "__init__.py").write_text('"""Generated from protos/ by services.common.codegen."""\n')


def main() -> int:
    generate()
    print(f"generated {len(proto_files())} protos into {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
