"""Generates the Python protobuf/gRPC modules from protos/ into the package `alise.v1`, at install only.

Why a package at the repository root: generated modules import each other by their proto package
path (`from alise.v1 import common_pb2`), so the output is laid out as that package instead of
patching imports. The output is not committed; scripts/install.sh runs this module (and whoever
edits a .proto runs it again). Nothing generates at import time: four services starting at once
would race on the same files, and a machine without grpcio-tools (images, the GPU machine, which
get the generated package copied in) cannot run protoc at all.

    protos/alise/v1/x.proto  --protoc-->  alise/v1/x_pb2.py, x_pb2_grpc.py, x_pb2.pyi
                                          alise/v1/generated_from.json  (sha256 of protos/)

`check()` (run by services.common.contracts on import) compares that recorded sha256 with the
current protos/ and raises ContractsNotGenerated naming the fix when the modules are missing or
stale. Content, not mtimes: a fresh clone, a copy to another machine or a `git checkout` changes
mtimes without changing the contracts. Where protos/ is absent (service images keep only the
generated package), only the modules' presence is checked.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
OUTPUT_ROOT = REPO_ROOT
PACKAGE_DIR = OUTPUT_ROOT / "alise" / "v1"
STAMP_FILE = PACKAGE_DIR / "generated_from.json"  # *.json: packaged by pyproject's package-data rule
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py")
FIX_COMMAND = "python -m services.common.codegen"


class ContractsNotGenerated(RuntimeError):
    """The generated modules in alise/v1 are missing or were generated from other .proto files."""


def proto_files() -> list[pathlib.Path]:
    """All .proto files of the alise.v1 package, sorted for a stable build."""
    return sorted((PROTO_ROOT / "alise" / "v1").glob("*.proto"))


def protos_sha256() -> str:
    """sha256 over every .proto's path (relative to protos/) and bytes, in sorted order."""
    digest = hashlib.sha256()
    for proto in proto_files():
        digest.update(proto.relative_to(PROTO_ROOT).as_posix().encode() + b"\0")
        digest.update(proto.read_bytes() + b"\0")
    return digest.hexdigest()


def _recorded_sha256() -> str | None:
    try:
        return str(json.loads(STAMP_FILE.read_text(encoding="utf-8"))["protos_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check() -> None:
    """Raises ContractsNotGenerated (naming the fix command) when alise/v1 is missing or stale."""
    if not (PACKAGE_DIR / "__init__.py").is_file():
        raise ContractsNotGenerated(
            f"the generated contracts are missing ({PACKAGE_DIR} has no package): run `{FIX_COMMAND}` "
            "(scripts/install.sh does), or copy a generated alise/ onto this machine"
        )
    if not PROTO_ROOT.is_dir():
        return  # a service image: only the generated package was copied in, and it is complete
    missing = [
        proto.stem + suffix
        for proto in proto_files()
        for suffix in GENERATED_SUFFIXES
        if not (PACKAGE_DIR / (proto.stem + suffix)).is_file()
    ]
    if missing:
        raise ContractsNotGenerated(f"generated contracts missing in {PACKAGE_DIR}: {missing}; run `{FIX_COMMAND}`")
    recorded, current = _recorded_sha256(), protos_sha256()
    if recorded != current:
        raise ContractsNotGenerated(
            f"the generated contracts in {PACKAGE_DIR} are stale: protos/ changed since they were generated "
            f"(recorded sha256 {(recorded or 'none')[:12]}, protos/ now {current[:12]}); run `{FIX_COMMAND}`"
        )


def generate() -> None:
    """Runs protoc (from grpcio-tools) over every proto, then records the protos' sha256.

    Raises RuntimeError on failure. The stamp is written last, so a failed run leaves the package
    stale (check() refuses it) rather than half-new and stamped.
    """
    import importlib.resources

    from grpc_tools import protoc  # imported here: only the install step needs grpcio-tools

    include_dir = str(importlib.resources.files("grpc_tools") / "_proto")
    PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
    STAMP_FILE.unlink(missing_ok=True)
    sha256 = protos_sha256()  # hashed before protoc reads them: an edit during the run leaves it stale
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
    STAMP_FILE.write_text(json.dumps({"protos_sha256": sha256}, indent=2) + "\n", encoding="utf-8")


def main() -> int:
    generate()
    print(f"generated {len(proto_files())} protos into {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
