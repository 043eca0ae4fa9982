"""Where and on what code a benchmark ran: machine, GPU, git commit (saved with every result).

Every probe is best effort: a missing `git` or `nvidia-smi` yields None, never an exception,
because a benchmark must still save its figures on a bare machine.
"""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PROBE_TIMEOUT_S = 10.0


def _run(argv: list[str], cwd: pathlib.Path | None = None) -> str | None:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _first_proc_value(path: str, key: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as proc_file:
            for line in proc_file:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def _gpus() -> list[str]:
    listing = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    return [line.strip() for line in listing.splitlines() if line.strip()] if listing else []


def machine_info() -> dict[str, object]:
    """OS, Python, CPU model and count, memory, GPUs (by nvidia-smi) of this machine."""
    mem_total = _first_proc_value("/proc/meminfo", "MemTotal")
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _first_proc_value("/proc/cpuinfo", "model name") or platform.processor(),
        "num_cpus": os.cpu_count(),
        "num_cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total": mem_total,
        "gpus": _gpus(),
    }


def git_info(repo_root: pathlib.Path = REPO_ROOT) -> dict[str, object]:
    """Commit hash and whether the working tree had uncommitted changes (None when unknown)."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo_root)
    status = _run(["git", "status", "--porcelain"], cwd=repo_root)  # untracked files count as dirty
    return {"commit": commit, "dirty": None if status is None else bool(status)}
