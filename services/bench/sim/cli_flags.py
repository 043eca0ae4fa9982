"""`alise bench sim`'s flags other than the steady-state method's (steady_cli.py): trace, cost model, policies,
predictions, engine shape and the KV host tier. Only definitions and defaults; cli_inputs.py turns them into
simulator inputs.
"""

from __future__ import annotations

import argparse
import pathlib

from services.bench.sim.feedback_texts import FeedbackTexts
from services.bench.sim.gpu_presets import GB, PRESETS, KvDtype
from services.bench.sim.kv_codecs import INT4_RELATIVE_ERROR, INT8_RELATIVE_ERROR
from services.bench.sim.kv_offload import DEFAULT_HOST_LINK_BYTES_PER_S, OFFLOAD_MODES, OffloadMode
from services.bench.sim.model_predictions import TRACE_NAME
from services.bench.sim.reference_heldout import REFERENCE_TRACE_NAMES
from services.bench.workload import TRACE_NAMES
from services.common import arg_types

PREDICTION_MODES = ("noisy-oracle", "none", "shipped-predictor")
DEFAULT_HOST_TIER_GB = 64.0
DEFAULT_LINK_GB_PER_S = DEFAULT_HOST_LINK_BYTES_PER_S / GB
REFERENCE_TRACES = " or ".join(REFERENCE_TRACE_NAMES)
DEFAULT_KV_ERROR_BUDGET = 0.1  # relative Frobenius error: admits int8 and int4 at their measured errors


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        choices=(*TRACE_NAMES, TRACE_NAME, *REFERENCE_TRACE_NAMES),
        default="sharegpt",
        help=f"{TRACE_NAME}: SmolLM2's own lengths on the prompts the shipped predictor held out (model_predictions.py); "
        f"{REFERENCE_TRACES}: the sharegpt / alpaca trace on the prompts it held out (reference_heldout.py)",
    )
    parser.add_argument("--num-requests", type=arg_types.positive_int, default=8000)
    parser.add_argument(
        "--length-divisor",
        type=float,
        default=1.0,
        help="lengths / this, as `alise bench serve --length-divisor` (the CPU stack's shape); 1 = as recorded",
    )
    parser.add_argument("--max-prompt-tokens", type=arg_types.positive_int, help="after division (default: no cap)")
    parser.add_argument("--max-output-tokens", type=arg_types.positive_int, help="after division (default: no cap)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b-h100")
    parser.add_argument(
        "--kv-cache-gb", type=arg_types.positive_float, help="KV pool size (default: what the card holds)"
    )
    parser.add_argument(
        "--kv-dtype",
        choices=[d.value for d in KvDtype],
        default=KvDtype.BF16.value,
        help="KV pool dtype of the roofline presets (int8: 1.97x the tokens, gpu_presets.py)",
    )
    parser.add_argument(
        "--int8-attention-efficiency",
        type=arg_types.positive_float,
        default=1.0,
        help="int8 attention's achieved bandwidth relative to bf16's (roofline: 1)",
    )
    parser.add_argument(
        "--cost-coefficients", help="base_s,per_token_s,per_kv_token_s fitted on measured steps (replaces the roofline)"
    )
    parser.add_argument("--policies", default="fcfs,alise,srpt-oracle,mlfq", help="comma-separated")
    parser.add_argument("--rates", default="", help="comma-separated req/s (default: fractions of the capacity)")
    parser.add_argument("--burstiness", type=arg_types.positive_float, default=1.0, help="gamma shape; 1 = Poisson")
    parser.add_argument(
        "--prediction",
        choices=PREDICTION_MODES,
        default="noisy-oracle",
        help=f"shipped-predictor: the shipped default predictor's own predictions (needs --trace {TRACE_NAME}, "
        f"{REFERENCE_TRACES})",
    )
    parser.add_argument(
        "--feedback-file",
        type=pathlib.Path,
        action="append",
        help=f"{TRACE_NAME}; {REFERENCE_TRACES} with --feedback-texts files: feedback JSONL the predictor trained "
        "on (repeatable; default: the shipped model's own, restored from docs/benchmarks/smollm2/lengths and "
        "../shared/data into the cache when the repository has their lengths files)",
    )
    parser.add_argument(
        "--feedback-texts",
        choices=[t.value for t in FeedbackTexts],
        default=FeedbackTexts.COLLECT_LIST.value,
        help=f"{REFERENCE_TRACES}: which prompt texts count as the model's feedback when its held-out prompts "
        "are found. collect-list (default; the figures in docs/benchmarks/sim use it): needs no feedback file; "
        "excludes every prompt of "
        "the list `alise collect-lengths` sent (--num-sharegpt 1150 --num-alpaca 620 --max-prompt-chars 1500 "
        "--seed 0, docs/benchmarks/smollm2), trained on or not: a superset of the feedback texts, so fewer "
        "prompts are held out. files: the feedback files' rows, as the model split them (the shipped model's, "
        f"restored, or --feedback-file). {TRACE_NAME} is those files' rows: it always reads them",
    )
    parser.add_argument("--tau", type=float, default=0.6, help="Kendall's tau of the noisy oracle")
    parser.add_argument("--bounds", default="2,4,8", help="latency bounds, multiples of the unloaded mean")
    parser.add_argument("--slo-multiple", type=arg_types.positive_float, default=4.0, help="goodput SLO multiple")
    parser.add_argument("--max-num-seqs", type=arg_types.positive_int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=arg_types.positive_int, default=2048)
    parser.add_argument("--max-model-len", type=arg_types.positive_int, default=4096)
    parser.add_argument("--max-wait-s", type=arg_types.positive_float, default=60.0)
    parser.add_argument("--seed", type=arg_types.seed, default=0)
    _add_offload_flags(parser)


def _add_offload_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kv-offload",
        default=OffloadMode.RECOMPUTE.value,
        help=f"comma-separated KV offload modes, each swept (one curve per policy+mode): {', '.join(OFFLOAD_MODES)}",
    )
    parser.add_argument(
        "--host-tier-gb",
        type=arg_types.positive_float,
        default=DEFAULT_HOST_TIER_GB,
        help="host memory for swapped KV (swap modes)",
    )
    parser.add_argument(
        "--host-slot-kb",
        type=arg_types.positive_float,
        help="host tier allocation unit (default: one full-precision KV block of the preset's model)",
    )
    parser.add_argument(
        "--host-link-gb-per-s",
        type=arg_types.positive_float,
        default=DEFAULT_LINK_GB_PER_S,
        help="effective host<->device copy rate per direction (H100 PCIe Gen5 pinned copies: ~25)",
    )
    parser.add_argument(
        "--kv-error-budget",
        type=arg_types.non_negative_float,
        default=DEFAULT_KV_ERROR_BUDGET,
        help="relative Frobenius error a lossy codec may add (swap-compress)",
    )
    parser.add_argument(
        "--int8-error",
        type=arg_types.non_negative_float,
        default=INT8_RELATIVE_ERROR,
        help="measured relative error of the int8 codec on real KV",
    )
    parser.add_argument(
        "--int4-error",
        type=arg_types.non_negative_float,
        default=INT4_RELATIVE_ERROR,
        help="measured relative error of the int4 codec on real KV",
    )
    parser.add_argument(
        "--plan-rpc-ms",
        type=arg_types.non_negative_float,
        default=0.0,
        help="memory service round trip charged per eviction event (gRPC loopback: ~0.7)",
    )
    parser.add_argument(
        "--no-prefetch",
        action="store_true",
        help="swap-ins are not started ahead of a restore: each stalls its step in full",
    )
