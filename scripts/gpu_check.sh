#!/usr/bin/env bash
# The one command a session with a GPU runs first (under 8 minutes on an H100):
#
#   1. device     nvidia-smi and torch's view of the GPU (name saved with every result)
#   2. build      the CUDA extension (services/engine/kernels, nvcc through torch)
#   3. gpu tests  every test marked `gpu`: varlen attention, decode form, cache write, engine backend
#                 vs the torch reference (bf16 and int8 KV), KV codecs on CUDA
#   4. sweep      `alise bench attention`: decode attention vs measured copy bandwidth (bandwidth
#                 fraction), bf16 vs int8 KV up to 8k context, torch SDPA baselines; then the
#                 end-to-end Llama-3-8B-shaped run: engine tokens/s vs HF generate() and the roofline
#
# Results go to $OUT (set on lent GPU machines) or docs/benchmarks/gpu/<device>/: one JSON per
# step plus gpu_check.json (device, each step's command, exit status and seconds). A failing step
# is recorded and the next one still runs; the script exits non-zero if any step failed.
#
#   scripts/gpu_check.sh [--dry-run] [--quick]
#     --dry-run  print the steps and where results would go; run nothing (works without a GPU)
#     --quick    smaller sweep and end-to-end batch (about 3 minutes)
set -uo pipefail

cd "$(dirname "$0")/.."
DRY_RUN=0
QUICK=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (--dry-run, --quick)" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python}"
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
if [ "$DRY_RUN" = 1 ]; then
  DEVICE="<device>"
else
  DEVICE="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' /' '__')"
  DEVICE="${DEVICE:-no-gpu}"
fi
RESULTS="${OUT:-docs/benchmarks/gpu/$DEVICE}"

if [ "$QUICK" = 1 ]; then
  SWEEP="--batches 1 32 256 --contexts 512 2048 8192 --num-iters 10 --e2e-batches 64 --e2e-context 1024 --e2e-output-tokens 32"
else
  SWEEP="--batches 1 8 32 64 256 --contexts 512 1024 2048 4096 8192 --num-iters 15 --e2e-batches 256 --e2e-context 1024 --e2e-output-tokens 64"
fi

# name | timeout seconds | command
STEPS=(
  "device|20|nvidia-smi && $PYTHON -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'"
  "build|160|$PYTHON -m services.engine.kernels.loader"
  "gpu_tests|100|$PYTHON -m pytest -q -m gpu -p no:cacheprovider --junitxml=$RESULTS/gpu_tests.xml tests/test_kernels_varlen_gpu.py tests/test_kernels_decode_gpu.py tests/test_kernels_cache_write_gpu.py tests/test_kernels_engine_gpu.py tests/test_engine_kv_codec.py"
  "attention_sweep|200|$PYTHON -m services.cli.main bench attention $SWEEP --out $RESULTS/attention.json"
)

TOTAL_S=0
for step in "${STEPS[@]}"; do TOTAL_S=$((TOTAL_S + $(cut -d'|' -f2 <<< "$step"))); done  # <= 480: 8 minutes

if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_check.sh --dry-run: results would go to $RESULTS/ (timeouts total $TOTAL_S s)"
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit command <<< "$step"
    echo "[$name] (timeout ${limit}s) $command"
  done
  exit 0
fi

mkdir -p "$RESULTS"
SUMMARY="$RESULTS/gpu_check.json"
FAILED=0
ENTRIES=""
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit command <<< "$step"
  echo "=== [$name] $command"
  started=$(date +%s.%N)
  timeout "$limit" bash -c "$command" 2>&1 | tee "$RESULTS/$name.log"
  status=${PIPESTATUS[0]}
  seconds=$(echo "$(date +%s.%N) - $started" | bc)
  [ "$status" = 0 ] || FAILED=1
  echo "=== [$name] exit $status in ${seconds}s"
  entry=$(printf '{"name": "%s", "command": %s, "exit_status": %d, "seconds": %.1f}' \
    "$name" "$($PYTHON -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$command")" "$status" "$seconds")
  ENTRIES="${ENTRIES:+$ENTRIES, }$entry"
done
printf '{"device": "%s", "git_commit": "%s", "date_utc": "%s", "steps": [%s]}\n' \
  "$DEVICE" "$(git rev-parse HEAD 2>/dev/null)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$ENTRIES" > "$SUMMARY"
echo "saved $SUMMARY"
exit $FAILED
