"""The before/after report of an exit-head build (docs/benchmarks/spec/exit_heads.json).

Expected speedup of early-exit drafting at layer L with k drafts, versus plain decoding:

    speedup(L, k) = E[tokens per verify] / (k * draft_cost(L) + verify_cost(k))
    E[tokens per verify] = 1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a)

costs as fractions of one measured decode step (batch 1, one thread), a the held-out greedy
agreement at L taken as the per-token acceptance (independent tokens: a simplification; real
acceptances come in runs, which favours longer accepted prefixes).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from services.common.run_info import git_info, machine_info
from services.engine.spec.exit_heads import expected_tokens_per_verify

SPEEDUP_DRAFT_COUNTS = (2, 4)
FORMULA = (
    "speedup(L, k) = E[tokens per verify] / (k * draft_cost(L) + verify_cost(k)); E = (1 - a^(k+1)) / (1 - a); "
    "costs are fractions of one decode step (batch 1, 1 thread); a = held-out greedy agreement at L"
)


def speedup(agreement: float, draft_cost: float, verify_cost: float, num_draft_tokens: int) -> float:
    return expected_tokens_per_verify(agreement, num_draft_tokens) / (num_draft_tokens * draft_cost + verify_cost)


def _layer_row(layer: int, agreement, costs) -> dict:
    draft_cost = costs.draft_cost_ratio()[layer]
    verify = costs.verify_cost_ratio()
    row = {
        "num_layers": layer,
        "agreement_untrained": round(agreement.teacher_forced_untrained, 4),
        "agreement_trained": round(agreement.teacher_forced_trained, 4),
        "on_policy_agreement_untrained": round(agreement.on_policy_untrained, 4),
        "on_policy_agreement_trained": round(agreement.on_policy_trained, 4),
        "draft_ms": round(costs.draft_ms[layer], 3),
        "draft_cost_ratio": round(draft_cost, 4),
    }
    for k in SPEEDUP_DRAFT_COUNTS:
        for label, value in (("", agreement.teacher_forced_trained), ("on_policy_", agreement.on_policy_trained)):
            row[f"{label}speedup_k{k}"] = round(speedup(value, draft_cost, verify[k], k), 4)
    return row


def report_document(config, metadata: dict, agreement: dict, costs, json_path: Path, timings_s: dict) -> dict:
    """The JSON document: machine, commit, recipe, data, per-layer figures, costs, the artifact."""
    npz_path = json_path.with_suffix(".npz")
    rows = [_layer_row(layer, agreement[layer], costs) for layer in sorted(agreement)]
    label = "on_policy_" if "on_policy_trained" in metadata["agreement"] else ""  # what ExitHeadSet uses
    best = {
        f"k{k}": max(rows, key=lambda row, key=f"{label}speedup_k{k}": row[key])["num_layers"]
        for k in SPEEDUP_DRAFT_COUNTS
    }
    return {
        "benchmark": "exit_heads",
        "command": "alise spec train-exit-heads",
        "machine": machine_info(),
        "git": git_info(),
        "model": config.model,
        "recipe": metadata["recipe"],
        "data": metadata["data"],
        "draft_vocab_size": config.draft_vocab_size,
        "draft_vocab_coverage": round(next(iter(agreement.values())).draft_vocab_coverage, 4),
        "formula": FORMULA,
        "cost_dtype": metadata["costs"]["dtype"],
        "decode_step_ms": round(costs.decode_step_ms, 3),
        "verify_ms": {str(k): round(ms, 3) for k, ms in costs.verify_ms.items()},
        "verify_cost_ratio": {str(k): round(v, 4) for k, v in costs.verify_cost_ratio().items()},
        "layers": rows,
        "best_layer": best,
        "best_layer_agreement": label + "agreement_trained",
        "artifact": {
            "json": json_path.name,
            "npz": npz_path.name,
            "npz_bytes": npz_path.stat().st_size,
            "npz_sha256": hashlib.sha256(npz_path.read_bytes()).hexdigest(),
        },
        "timings_s": {key: round(value, 1) for key, value in timings_s.items()},
        "training": asdict(config.training),
    }
