"""Builds and drives the SIMT emulator of tests/kernel_sim (the CUDA kernels' code on CPU).

`build_driver` compiles the real kernel sources with g++ -DALISE_SIMT; `simulate_attention`
(any query lengths), `simulate_decode` (one token per sequence) and `simulate_write` pass tensors
to it through raw files; `EmulatedKernels` offers the extension's interface (paged_attention,
write_cache) on CPU tensors, so the engine's CUDA backend can run on CPU.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np
import torch

from services.engine.kernels.loader import CSRC_DIR, CUDA_SOURCES
from services.engine.kernels.ops import SplitPlan, row_tile_for

SIM_DIR = pathlib.Path(__file__).resolve().parent / "kernel_sim"
HOST_COMPILER = shutil.which("g++")
ELEMENT_TYPES = {torch.float16: 0, torch.bfloat16: 1, torch.int8: 2}


def build_driver(directory: pathlib.Path) -> pathlib.Path:
    """Compiles the emulator with the kernel sources; returns the binary's path.

    The binary is cached in the temp dir under a digest of every source it is built from, so the
    test modules that need it (and reruns) compile it once (~15 s of g++); `directory` is where a
    fresh build is made before it is moved into the cache."""
    sources = [CSRC_DIR / name for name in CUDA_SOURCES] + [SIM_DIR / "driver.cpp"]
    inputs = sorted([*sources, *CSRC_DIR.glob("*.h"), *CSRC_DIR.glob("*.cuh"), *SIM_DIR.glob("*.h")])
    digest = hashlib.sha256(b"".join(path.name.encode() + path.read_bytes() for path in inputs)).hexdigest()[:16]
    cached = pathlib.Path(tempfile.gettempdir()) / f"alise_simt_{digest}" / "simt_driver"
    if cached.is_file():
        return cached
    binary = directory / "simt_driver"
    command = [HOST_COMPILER, "-std=c++20", "-O1", "-Wall", "-DALISE_SIMT", f"-I{SIM_DIR}", f"-I{CSRC_DIR}"]
    result = subprocess.run(
        [*command, "-x", "c++", *map(str, sources), "-o", str(binary)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the SIMT emulator failed:\n{result.stderr[-4000:]}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    staged = cached.with_name(f"simt_driver.{os.getpid()}")
    shutil.copy2(binary, staged)
    os.replace(staged, cached)  # atomic: a concurrent build never exposes a partial binary
    return cached


def _save(directory: pathlib.Path, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.view(torch.int16)
    tensor.numpy().tofile(directory / f"{name}.bin")


def _load(directory: pathlib.Path, name: str, like: torch.Tensor) -> torch.Tensor:
    storage = torch.int16 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    raw = torch.from_numpy(np.fromfile(directory / f"{name}.bin", dtype=torch.empty(0, dtype=storage).numpy().dtype))
    return raw.view(like.dtype).reshape(like.shape)


def _run(driver, mode: str, directory: pathlib.Path, params: dict[str, float]) -> None:
    (directory / "params.txt").write_text("".join(f"{name} {value!r}\n" for name, value in params.items()))
    result = subprocess.run([str(driver), mode, str(directory)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"simt_driver {mode} failed: {result.stderr[-2000:]}")


def simulate_attention(
    driver,
    directory: pathlib.Path,
    query,
    key_cache,
    value_cache,
    key_scales,
    value_scales,
    block_tables,
    seq_lens,
    query_start_loc,
    work_items,
    scale: float,
    plan: SplitPlan,
    row_tile: int,
) -> torch.Tensor:
    """Runs launch_paged_attention on copies; returns out (poisoned with NaN before the call).

    query_start_loc and work_items None: one token per request (the decode form)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = torch.full_like(query, float("nan"))
    tensors = {
        "query": query,
        "key_cache": key_cache,
        "value_cache": value_cache,
        "block_tables": block_tables,
        "seq_lens": seq_lens,
        "out": out,
    }
    if key_scales is not None:
        tensors.update(key_scales=key_scales, value_scales=value_scales)
    varlen = query_start_loc is not None
    if varlen:
        tensors.update(query_start_loc=query_start_loc, work_items=work_items)
    for name, tensor in tensors.items():
        _save(directory, name, tensor)
    num_tokens, num_heads, head_dim = query.shape
    params = {
        "num_tokens": num_tokens,
        "num_requests": seq_lens.shape[0],
        "num_heads": num_heads,
        "num_kv_heads": key_cache.shape[2],
        "head_dim": head_dim,
        "block_size": key_cache.shape[1],
        "max_blocks": block_tables.shape[1],
        "num_splits": plan.num_splits,
        "partition_tokens": plan.partition_tokens,
        "scale": scale,
        "query_type": ELEMENT_TYPES[query.dtype],
        "cache_type": ELEMENT_TYPES[key_cache.dtype],
        "varlen": int(varlen),
        "num_work_items": 0 if work_items is None else work_items.shape[0],
        "row_tile": row_tile,
    }
    _run(driver, "attend", directory, params)
    return _load(directory, "out", out)


def simulate_decode(driver, case, plan: SplitPlan, directory: pathlib.Path) -> torch.Tensor:
    """A PagedCase (one token per sequence) through the kernel's decode form."""
    row_tile = row_tile_for(1, case.query.shape[1] // case.key_cache.shape[2])
    return simulate_attention(
        driver,
        directory,
        case.query,
        case.key_cache,
        case.value_cache,
        case.key_scales,
        case.value_scales,
        case.block_tables,
        case.context_lens,
        None,
        None,
        case.scale,
        plan,
        row_tile,
    )


def simulate_write(driver, tmp_path, keys, values, caches, scales, slot_mapping, block_size) -> None:
    """Runs the write kernel on copies; updates caches (and scales) in place."""
    params = {
        "num_tokens": keys.shape[0],
        "num_kv_heads": keys.shape[1],
        "head_dim": keys.shape[2],
        "block_size": block_size,
        "source_type": ELEMENT_TYPES[keys.dtype],
        "cache_type": ELEMENT_TYPES[caches[0].dtype],
    }
    for name, tensor in (
        ("key", keys),
        ("value", values),
        ("key_cache", caches[0]),
        ("value_cache", caches[1]),
        ("slot_mapping", slot_mapping),
    ):
        _save(tmp_path, name, tensor)
    if scales is not None:
        _save(tmp_path, "key_scales", scales[0])
        _save(tmp_path, "value_scales", scales[1])
    _run(driver, "write", tmp_path, params)
    for index, name in enumerate(("key_cache", "value_cache")):
        caches[index].copy_(_load(tmp_path, name, caches[index]))
        if scales is not None:
            scales[index].copy_(_load(tmp_path, name.replace("cache", "scales"), scales[index]))


class EmulatedKernels:
    """The extension's two functions on CPU tensors, run by the emulator (contiguous inputs)."""

    def __init__(self, driver: pathlib.Path) -> None:
        self.driver = driver
        self.num_calls = 0

    def paged_attention(
        self,
        out,
        query,
        key_cache,
        value_cache,
        key_scales,
        value_scales,
        block_tables,
        seq_lens,
        query_start_loc,
        work_items,
        scale,
        num_splits,
        partition_tokens,
        row_tile,
    ) -> None:
        with tempfile.TemporaryDirectory() as directory:
            out.copy_(
                simulate_attention(
                    self.driver,
                    pathlib.Path(directory),
                    query.contiguous(),
                    key_cache,
                    value_cache,
                    key_scales,
                    value_scales,
                    block_tables.contiguous(),
                    seq_lens,
                    query_start_loc,
                    work_items,
                    scale,
                    SplitPlan(num_splits, partition_tokens),
                    row_tile,
                )
            )
        self.num_calls += 1

    def write_cache(self, key, value, key_cache, value_cache, key_scales, value_scales, slot_mapping) -> None:
        scales = None if key_scales is None else [key_scales, value_scales]
        with tempfile.TemporaryDirectory() as directory:
            simulate_write(
                self.driver,
                pathlib.Path(directory),
                key.contiguous(),
                value.contiguous(),
                [key_cache, value_cache],
                scales,
                slot_mapping,
                key_cache.shape[1],
            )
        self.num_calls += 1
