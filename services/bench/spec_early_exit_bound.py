"""`python -m services.bench.spec_early_exit_bound`: can early-exit drafting reach 1.3x on SmolLM2-135M on CPU?

From the shipped exit-head report (docs/benchmarks/spec/exit_heads.json: on-policy agreement of the
trained heads and draft / verify costs, all measured in one run) it computes, per exit layer L and k:

    expected speedup      E[tokens per verify] / (k * draft_cost(L) + verify_cost(k))   at the measured a
    ceiling               the same at a = 1 (every draft accepted)
    agreement needed      the smallest a with expected speedup >= 1.3

next to what the engine measured (spec_early_exit_trained.json), and estimates what the route that
could reach the needed agreement would cost: fine-tuning SmolLM2 itself with an early-exit loss
(LayerSkip), from this CPU's measured training throughput (one forward + backward, 1 thread) and
6 * parameters * tokens FLOPs. It runs nothing of that fine-tune. Saves early_exit_bound.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

from services.common.run_info import git_info, machine_info
from services.engine.spec.exit_head_report import EARLY_EXIT_GOAL_SPEEDUP, early_exit_bound

SPEC_DIR = pathlib.Path("docs/benchmarks/spec")
FINE_TUNE_TOKEN_BUDGETS = (10**8, 10**9)  # assumptions: 0.005% and 0.05% of SmolLM2's ~2T pretraining tokens


def measured_in_engine(bench_path: pathlib.Path) -> dict:
    """Per prompt set: acceptance, accepted per verify and speedup of early exit at batch 1 (the engine run)."""
    cells = json.loads(bench_path.read_text())["cells"]
    rows = {}
    for name, by_batch in cells.items():
        cell = by_batch.get("1", {}).get("early-exit")
        if cell is not None:
            rows[name] = {
                "acceptance_rate": cell["acceptance_rate"],
                "mean_accepted_per_verify": cell["mean_accepted_per_verify"],
                "speedup_cpu_time_median": cell["speedup_over_off_cpu_time"]["median"],
            }
    return rows


def training_throughput(model_name: str, num_tokens: int = 512, num_steps: int = 3) -> dict:
    """Tokens per CPU second of one forward + backward of the full model (fp32, 1 thread, sequence 256)."""
    import torch

    from services.engine.model_loader import load_model

    torch.set_num_threads(1)
    model = load_model(model_name, dtype=torch.float32, device=torch.device("cpu"), seed=0).model
    model.train()
    batch = torch.randint(
        0, model.config.vocab_size, (num_tokens // 256, 256), generator=torch.Generator().manual_seed(0)
    )
    times_s = []
    for _ in range(num_steps):
        started = time.thread_time()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        times_s.append(time.thread_time() - started)
    best_s = min(times_s[1:])  # the first step allocates
    num_parameters = sum(p.numel() for p in model.parameters())
    return {"num_parameters": num_parameters, "tokens_per_step": num_tokens, "step_s_best": best_s,
            "tokens_per_s": num_tokens / best_s, "flops_per_s": 6 * num_parameters * num_tokens / best_s}  # fmt: skip


def fine_tune_estimate(throughput: dict) -> list[dict]:
    rows = []
    for budget in FINE_TUNE_TOKEN_BUDGETS:
        flops = 6 * throughput["num_parameters"] * budget
        rows.append(
            {"tokens": budget, "flops": flops, "days_on_this_cpu_1_thread": budget / throughput["tokens_per_s"] / 86400}
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.bench.spec_early_exit_bound", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--heads-report", type=pathlib.Path, default=SPEC_DIR / "exit_heads.json")
    parser.add_argument("--engine-run", type=pathlib.Path, default=SPEC_DIR / "spec_early_exit_trained.json")
    parser.add_argument("--out", type=pathlib.Path, default=SPEC_DIR / "early_exit_bound.json")
    args = parser.parse_args(argv)
    heads = json.loads(args.heads_report.read_text())
    bound = early_exit_bound(heads["layers"], heads["verify_cost_ratio"], EARLY_EXIT_GOAL_SPEEDUP)
    loads_before = os.getloadavg()
    throughput = training_throughput(args.model)
    best, least = bound["best_expected"], bound["least_agreement_needed"]
    needed_key = f"agreement_needed_for_{EARLY_EXIT_GOAL_SPEEDUP}x"
    reachable_layers = sorted({cell["num_layers"] for cell in bound["grid"] if cell[needed_key] is not None})
    measured_max = max(cell["agreement"] for cell in bound["grid"] if cell["num_layers"] in reachable_layers)
    document = {
        "benchmark": "spec_early_exit_bound",
        "machine": machine_info(),
        "git": git_info(),
        "sources": {"heads_report": str(args.heads_report), "engine_run": str(args.engine_run)},
        "bound": bound,
        "engine_measured_batch1": measured_in_engine(args.engine_run),
        "reachable_with_shipped_heads": best["expected_speedup"] >= EARLY_EXIT_GOAL_SPEEDUP,
        "verdict": (
            f"best expected {best['expected_speedup']:.2f}x (L={best['num_layers']}, k={best['k']}, agreement "
            f"{best['agreement']:.2f}); 1.3x needs agreement >= {least[f'agreement_needed_for_{EARLY_EXIT_GOAL_SPEEDUP}x']:.2f} "
            f"at L={least['num_layers']}, k={least['k']}; at the layers where 1.3x is possible at all (L <= "
            f"{max(reachable_layers)}) the trained heads reach at most {measured_max:.2f} on policy: not reachable "
            "on this model and CPU without a model trained for early exit"
        ),
        "fine_tune_route": {
            "what": "LayerSkip-style continual training of SmolLM2-135M itself: early-exit loss on shared norm + LM "
            "head at every layer, layer dropout rising with depth; then re-measure agreement by layer",
            "measured_training_throughput": throughput,
            "estimates": fine_tune_estimate(throughput),
            "load_average_1_5_15_before": loads_before,
            "load_average_1_5_15_after": os.getloadavg(),
        },
    }
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(document["verdict"])
    print(json.dumps(document["fine_tune_route"]["estimates"]))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
