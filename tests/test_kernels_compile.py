"""Every CUDA source compiles with nvcc for sm_80 and sm_90, without a GPU and without spilling.

The kernels include no torch header, so a bare `nvcc -c` (with the loader's flags and the ones
torch's extension builder adds) checks them on any machine with the CUDA toolkit (skipped where
nvcc is absent). The binding includes only torch headers; it is
syntax-checked with the host compiler against the installed torch, CPU build included.
Both architectures are compiled in one nvcc call per file, the files in parallel.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sysconfig

import pytest

from services.engine.kernels.loader import CPP_SOURCES, CSRC_DIR, CUDA_SOURCES, NVCC_FLAGS

ARCHITECTURES = ("80", "90")
NVCC = shutil.which("nvcc")
HOST_COMPILER = shutil.which("g++") or shutil.which("c++")
COMPILE_TIMEOUT_S = 600
SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH: CUDA compile check skipped")


def _torch_nvcc_flags() -> list[str]:
    """The flags torch's extension builder adds (no implicit half/bfloat16 conversions, ...)."""
    from torch.utils import cpp_extension

    return list(getattr(cpp_extension, "COMMON_NVCC_FLAGS", []))


def _compile(source: str, out_dir: str) -> subprocess.CompletedProcess:
    gencode = [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in ARCHITECTURES]
    command = [NVCC, "-c", "-std=c++17", *NVCC_FLAGS, *_torch_nvcc_flags(), "-Xptxas", "-v", *gencode]
    command.append(str(CSRC_DIR / source))
    command += ["-o", os.path.join(out_dir, source + ".o")]
    return subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    out_dir = str(tmp_path_factory.mktemp("nvcc"))
    workers = max(1, min(len(CUDA_SOURCES), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda source: _compile(source, out_dir), CUDA_SOURCES)
        return dict(zip(CUDA_SOURCES, results))


@pytest.mark.parametrize("source", CUDA_SOURCES)
def test_cuda_source_compiles_for_sm80_and_sm90(compiled, source):
    result = compiled[source]
    assert result.returncode == 0, f"nvcc failed on {source}:\n{result.stderr[-4000:]}"
    assert "warning" not in result.stderr.lower(), f"nvcc warned on {source}:\n{result.stderr[-4000:]}"
    for arch in ARCHITECTURES:  # ptxas -v reports every kernel per target
        assert f"sm_{arch}" in result.stderr, f"no ptxas report for sm_{arch} in {source}"


def test_attention_kernels_exist_for_every_variant_and_never_spill(compiled):
    """Spills put the softmax state in local memory: a performance bug the compiler reports."""
    reports = "".join(result.stderr for result in compiled.values())
    attention_entries = {entry for entry in ENTRY.findall(reports) if "paged_attention_kernel" in entry[0]}
    # 2 head dims x 2 query dtypes x 2 cache kinds x 2 block sizes x 4 row tiles = 64 kernels per arch.
    assert len(attention_entries) == 64 * len(ARCHITECTURES)
    spills = [(int(stores), int(loads)) for stores, loads in SPILL.findall(reports)]
    assert len(spills) >= len(ENTRY.findall(reports)), "ptxas did not report every kernel"
    assert all(stores == 0 and loads == 0 for stores, loads in spills), "a kernel spills registers"


@pytest.mark.skipif(HOST_COMPILER is None, reason="no host C++ compiler")
def test_binding_compiles_against_the_installed_torch_headers():
    from torch.utils import cpp_extension

    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    command = [HOST_COMPILER, "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror"]
    command += ["-DTORCH_EXTENSION_NAME=alise_kernels_check"]
    command += [flag for path in includes for flag in ("-isystem", path)]
    for source in CPP_SOURCES:
        result = subprocess.run(
            [*command, str(CSRC_DIR / source)], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S
        )
        assert result.returncode == 0, f"{source} does not compile:\n{result.stderr[-4000:]}"
