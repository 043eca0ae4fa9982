"""Printing `alise predictor ceiling`'s report: one line per generator and per repeated-prompt set."""

from __future__ import annotations

import math


def _tau(entry: dict) -> str:
    """Formats as "0.512 [0.43, 0.59]" from a TauEstimate dict; "n/a" where there were too few prompts."""
    tau = entry.get("tau")
    if tau is None or math.isnan(tau):
        return "n/a"
    return f"{tau:.3f} [{entry['ci95_low']:.2f}, {entry['ci95_high']:.2f}]"


def print_summary(report: dict) -> None:
    """The headline figures with 95% bootstrap intervals over prompts."""
    print(f"model {report['model_version']}; tau [95% interval over prompts]")
    print("AlpacaEval, held-out instructions: model p50 vs cross-model leave-one-out mean of the other generators")
    print(f"  {'generator':<28} {'n':>4}  {'model':<22} {'cross-model mean':<22} share  all 662: cross-model")
    for name, entry in report["alpaca_eval"].items():
        model, loo = entry["heldout_model"], entry["heldout_cross_model_mean"]
        print(
            f"  {name:<28} {model['num_prompts']:>4}  {_tau(model):<22} {_tau(loo):<22} "
            f"{entry['model_share_of_cross_model']:.2f}   {_tau(entry['all_instructions_cross_model_mean'])}"
        )
    for key, title in (
        ("sharegpt_repeated_prompts", "ShareGPT prompts with >= 2 independent answers"),
        ("served_model_samples", "served model sampled twice per prompt"),
    ):
        if key in report:
            _print_repeated(title, report[key])


def _print_repeated(title: str, entry: dict) -> None:
    ideal = entry["ideal_predictor_gaussian"]
    print(
        f"{title}: {entry['num_prompts']} prompts, {entry['num_answers']} answers"
        + (f" ({entry['num_capped_answers']} capped at max_tokens)" if entry["num_capped_answers"] else "")
    )
    print(f"  sample vs sample            {_tau(entry['sample_vs_sample'])}")
    print(f"  ideal predictor (Gaussian)  {_tau(ideal)}")
    print(f"  model ({entry['model_generator_column']}), all prompts   {_tau(entry['model_all_prompts'])}")
    held = entry["model_heldout_prompts"]
    print(
        f"  model, {held['num_prompts']} held-out prompts  {_tau(held)}; "
        f"sample vs sample on them {_tau(entry['heldout_sample_vs_sample'])}"
    )
