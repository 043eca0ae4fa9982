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
EARLY_EXIT_GOAL_SPEEDUP = 1.3  # issue 18's early-exit goal (batch 1, some prompt set)
FORMULA = (
    "speedup(L, k) = E[tokens per verify] / (k * draft_cost(L) + verify_cost(k)); E = (1 - a^(k+1)) / (1 - a); "
    "costs are fractions of one decode step (batch 1, 1 thread); a = held-out greedy agreement at L"
)


def speedup(agreement: float, draft_cost: float, verify_cost: float, num_draft_tokens: int) -> float:
    return expected_tokens_per_verify(agreement, num_draft_tokens) / (num_draft_tokens * draft_cost + verify_cost)


def required_agreement(draft_cost: float, verify_cost: float, num_draft_tokens: int, target: float) -> float | None:
    """The smallest per-token acceptance a with speedup(a) >= target (bisection: speedup rises with a);
    None when even a = 1 (every draft accepted) stays below target."""
    if speedup(1.0, draft_cost, verify_cost, num_draft_tokens) < target:
        return None
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (
            (middle, high) if speedup(middle, draft_cost, verify_cost, num_draft_tokens) < target else (low, middle)
        )
    return high


def early_exit_bound(layers: list[dict], verify_cost: dict[str, float], target: float) -> dict:
    """Per layer and k: the expected speedup at the measured (on-policy, trained) agreement, the ceiling at
    agreement 1, and the agreement a head would need for `target`; plus the best of each."""
    grid = []
    for row in layers:
        agreement = row.get("on_policy_agreement_trained", row["agreement_trained"])
        for key, verify in sorted(verify_cost.items(), key=lambda item: int(item[0])):
            k, draft = int(key), row["draft_cost_ratio"]
            needed = required_agreement(draft, verify, k, target)
            grid.append({
                "num_layers": row["num_layers"], "k": k, "agreement": agreement,
                "expected_speedup": round(speedup(agreement, draft, verify, k), 4),
                "speedup_if_every_draft_accepted": round(speedup(1.0, draft, verify, k), 4),
                f"agreement_needed_for_{target}x": None if needed is None else round(needed, 4),
            })  # fmt: skip
    needed_key = f"agreement_needed_for_{target}x"
    reachable = [cell for cell in grid if cell[needed_key] is not None]
    return {
        "target_speedup": target,
        "formula": FORMULA,
        "grid": grid,
        "best_expected": max(grid, key=lambda cell: cell["expected_speedup"]),
        "least_agreement_needed": min(reachable, key=lambda cell: cell[needed_key]) if reachable else None,
    }


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
        "early_exit_bound": early_exit_bound(
            rows, {str(k): v for k, v in costs.verify_cost_ratio().items()}, EARLY_EXIT_GOAL_SPEEDUP
        ),
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
