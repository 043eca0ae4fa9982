"""The two baselines every evaluation reports next to the model, fitted on the training split.

- train median: always predict the generator's median training length (its tau is undefined: a
  constant ranks nothing);
- prompt length only: the generator's training lengths binned by prompt length (equal-count bins
  of log prompt tokens), each bin predicting its own p10 / p50 / p90 / mean. This is the best any
  model can do that sees only the prompt length, up to the bin resolution.

Both are stored in the model's metadata.json (a few hundred numbers), so `alise predictor eval`
reports them without the training data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

NUM_PROMPT_LENGTH_BINS = 16  # equal-count bins of prompt length per generator


@dataclass(frozen=True)
class PromptLengthBins:
    """One generator's prompt-length-only model."""

    upper_edges_tokens: list[float]  # bin i holds prompts with tokens <= upper_edges_tokens[i] (last: +inf)
    quantile_tokens: list[list[float]]  # per bin, output tokens at each quantile level
    mean_tokens: list[float]  # per bin, mean output tokens
    median_tokens: float  # the generator's median output tokens (the train-median baseline)
    overall_quantile_tokens: list[float]  # the generator's output tokens at each quantile level


def fit_prompt_length_bins(
    prompt_tokens: np.ndarray, output_tokens: np.ndarray, quantile_levels: Sequence[float]
) -> PromptLengthBins:
    """Equal-count bins of prompt length, with each bin's output-length quantiles and mean."""
    num_bins = max(1, min(NUM_PROMPT_LENGTH_BINS, len(prompt_tokens) // 20))
    edges = np.unique(np.quantile(prompt_tokens, np.linspace(0, 1, num_bins + 1)[1:-1]))
    bins = np.searchsorted(edges, prompt_tokens, side="left")
    quantiles, means = [], []
    for index in range(len(edges) + 1):
        members = output_tokens[bins == index]
        if members.size == 0:
            members = output_tokens
        quantiles.append([float(np.quantile(members, level)) for level in quantile_levels])
        means.append(float(np.mean(members)))
    return PromptLengthBins(
        upper_edges_tokens=[float(edge) for edge in edges],
        quantile_tokens=quantiles,
        mean_tokens=means,
        median_tokens=float(np.median(output_tokens)),
        overall_quantile_tokens=[float(np.quantile(output_tokens, level)) for level in quantile_levels],
    )


@dataclass(frozen=True)
class Baselines:
    """Both baselines for every generator the model knows."""

    quantile_levels: tuple[float, ...]  # levels of PromptLengthBins.quantile_tokens columns
    by_generator: dict[str, PromptLengthBins]  # generator -> its baselines

    def to_dict(self) -> dict[str, object]:
        return {
            "quantile_levels": list(self.quantile_levels),
            "by_generator": {name: asdict(bins) for name, bins in self.by_generator.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict) -> "Baselines":
        return cls(
            quantile_levels=tuple(raw["quantile_levels"]),
            by_generator={name: PromptLengthBins(**bins) for name, bins in raw["by_generator"].items()},
        )

    def _bins(self, generator: str) -> PromptLengthBins:
        if generator not in self.by_generator:
            raise ValueError(f"no baseline for generator {generator!r}; known: {sorted(self.by_generator)}")
        return self.by_generator[generator]

    def train_median(self, generators: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(median [n], quantiles [n, levels]): each row's generator's training median and quantiles."""
        median = np.array([self._bins(name).median_tokens for name in generators], dtype=np.float64)
        quantiles = np.array([self._bins(name).overall_quantile_tokens for name in generators], dtype=np.float64)
        return median, quantiles.reshape(len(generators), len(self.quantile_levels))

    def prompt_length_only(self, generators: Sequence[str], prompt_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean [n], quantiles [n, levels]) of the prompt-length-only model."""
        mean = np.zeros(len(generators))
        quantiles = np.zeros((len(generators), len(self.quantile_levels)))
        for row, (name, tokens) in enumerate(zip(generators, prompt_tokens)):
            bins = self._bins(name)
            index = int(np.searchsorted(bins.upper_edges_tokens, tokens, side="left"))
            mean[row] = bins.mean_tokens[index]
            quantiles[row] = bins.quantile_tokens[index]
        return mean, quantiles
