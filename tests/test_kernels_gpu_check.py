"""scripts/gpu_check.sh --dry-run on CPU: it lists every step a GPU session runs, within 8 minutes
of timeouts, writes nothing, and each listed Python entry point exists."""

import pathlib
import re
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _dry_run(*args: str, env_out: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", **({"OUT": env_out} if env_out else {})}
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, env=env, timeout=30, cwd=REPO
    )


def test_dry_run_lists_build_gpu_tests_and_sweep_within_eight_minutes(tmp_path):
    result = _dry_run(env_out=str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    steps = [re.match(r"\[(\w+)\] \(timeout (\d+)s\) (.*)", line) for line in lines[1:]]
    assert [m.group(1) for m in steps] == ["device", "build", "gpu_tests", "attention_sweep"]
    assert sum(int(m.group(2)) for m in steps) <= 480
    commands = {m.group(1): m.group(3) for m in steps}
    assert "-m services.engine.kernels.loader" in commands["build"]
    assert "-m gpu" in commands["gpu_tests"] and "tests/test_kernels_varlen_gpu.py" in commands["gpu_tests"]
    assert "bench attention" in commands["attention_sweep"] and "--e2e-batches" in commands["attention_sweep"]
    assert f"{tmp_path}/out/attention.json" in commands["attention_sweep"]  # results under $OUT
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    for test_file in re.findall(r"tests/\S+\.py", commands["gpu_tests"]):
        assert (REPO / test_file).is_file(), test_file


def test_quick_mode_and_bad_arguments():
    quick = _dry_run("--quick")
    assert quick.returncode == 0 and "--e2e-batches 64" in quick.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--nope"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr
