"""Training of the fine-tuned length encoder, with out-of-fold scores for the trees.

    training examples --dedupe by prompt text--> prompt table: text, group, log1p(tokens) per generator
    bottom graph (ONNX, as served) on every prompt -> hidden states [n, 32, 384], computed once
    for each of num_folds folds (data.group_fold, as the text heads): top encoder fitted without
        the fold, scores the fold's prompts           -> out-of-fold scores of every training row
    final top encoder fitted on every prompt -> int8 ONNX (encoder.onnx), checked against torch

The trees learn how far to trust the encoder from out-of-fold scores (a score of a prompt the
encoder was trained on would look better than any served one); held-out rows and served prompts
get the final encoder's scores. The loss is squared error on log1p(tokens), averaged over each
prompt's known generators (an AlpacaEval instruction has ten answers, a ShareGPT prompt one), so
every prompt weighs the same: regression on the log scale ranks as well as a pairwise loss here
and its scores are on the scale the trees and heads already use.

Deterministic for a given seed, data and thread count: seeded head initialization, dropout and
batch order, `torch.use_deterministic_algorithms`, fixed threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from services.predictor import data
from services.predictor.embedding import DEFAULT_WORD_PIECES
from services.predictor.finetune_encoder import FrozenBottom
from services.predictor.finetune_model import (
    HIDDEN_SIZE,
    NUM_LAYERS,
    FinetuneSettings,
    load_base_encoder,
    new_top_encoder,
)

# The int8 top graph vs torch, in log1p(tokens): each retrained layer quantized adds rounding. Measured max over
# the check prompts: 0.08 with 2 layers (8-bit), 0.24 with 6 (8-bit), 0.28 with 6 (7-bit, the export since
# 162afbb); a broken export (wrong weights or order) is off by more than 1. A larger gap fails the training.
MAX_ONNX_SCORE_DIFFERENCE_BASE = 0.1
MAX_ONNX_SCORE_DIFFERENCE_PER_LAYER = 0.05
NUM_CHECK_PROMPTS = 64  # prompts on which the exported graph is compared with torch
Progress = Callable[[str], None]


@dataclass(frozen=True)
class PromptTable:
    """Training prompts, each once, with their answers' lengths per generator column."""

    texts: list[str]  # unique prompt texts
    group_ids: list[str]  # split group of each prompt (equal texts share a group, data.py)
    log_targets: np.ndarray  # float64 [n, G]: mean log1p(output tokens) per generator; NaN = no answer
    row_of_example: np.ndarray  # int64 [num_examples]: the table row of each example
    soft_targets: np.ndarray | None = None  # float64 [n, M]: log1p(tokens) of M length-only generators; NaN = none
    soft_columns: tuple[int, ...] = ()  # score columns whose mean the soft pairs rank (the AlpacaEval ones)


@dataclass(frozen=True)
class PaddedStates:
    """Bottom-graph outputs of the table's prompts, zero-padded to the window."""

    states: np.ndarray  # float32 [n, max_tokens, HIDDEN_SIZE]
    lengths: np.ndarray  # int64 [n]: word pieces of each prompt ([CLS] and [SEP] included)


@dataclass(frozen=True)
class TrainedEncoder:
    """What `train_encoder` returns."""

    top_graph: bytes  # the final encoder's int8 ONNX graph (encoder.onnx)
    train_scores: np.ndarray  # float32 [num_examples, G]: out-of-fold scores of each training example
    details: dict[str, object]  # recorded in metadata.json: settings, seconds, ONNX vs torch gap


def prompt_table(examples: Sequence[data.LengthExample], generators: Sequence[str]) -> PromptTable:
    """One row per distinct prompt text; a generator's answers to it are averaged on the log scale."""
    column_of = {name: index for index, name in enumerate(generators)}
    row_of_text: dict[str, int] = {}
    rows = np.zeros(len(examples), np.int64)
    texts, groups = [], []
    for index, example in enumerate(examples):
        row = row_of_text.setdefault(example.prompt_text, len(texts))
        if row == len(texts):
            texts.append(example.prompt_text)
            groups.append(example.group_id)
        rows[index] = row
    sums, counts = np.zeros((len(texts), len(generators))), np.zeros((len(texts), len(generators)))
    for example, row in zip(examples, rows):
        sums[row, column_of[example.source]] += np.log1p(example.num_output_tokens)
        counts[row, column_of[example.source]] += 1
    with np.errstate(invalid="ignore"):
        return PromptTable(texts, groups, sums / np.where(counts > 0, counts, np.nan), rows)


def with_soft_targets(
    table: PromptTable, soft_lengths: dict[str, np.ndarray] | None, generators: Sequence[str]
) -> PromptTable:
    """The table with log1p lengths of many length-only generators for the prompts that have them
    (data.load_all_generator_lengths), ranked on the mean score of the AlpacaEval columns."""
    columns = tuple(index for index, name in enumerate(generators) if name.startswith(data.ALPACA_EVAL_SOURCE_PREFIX))
    if not soft_lengths or not columns:
        return table
    width = len(next(iter(soft_lengths.values())))
    soft = np.full((len(table.texts), width), np.nan)
    for row, text in enumerate(table.texts):
        if text in soft_lengths:
            soft[row] = np.log1p(soft_lengths[text])
    return dataclasses.replace(table, soft_targets=soft, soft_columns=columns)


def bottom_states(bottom: FrozenBottom, texts: Sequence[str], num_threads: int, progress: Progress) -> PaddedStates:
    """The bottom graph on every prompt, one at a time as served, num_threads prompts at once."""
    started = time.perf_counter()
    states = np.zeros((len(texts), bottom.spec.max_tokens, HIDDEN_SIZE), np.float32)
    lengths = np.zeros(len(texts), np.int64)
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        for row, hidden in enumerate(pool.map(bottom.hidden_states, texts)):
            states[row, : hidden.shape[0]] = hidden
            lengths[row] = hidden.shape[0]
    progress(f"bottom graph on {len(texts)} prompts in {time.perf_counter() - started:.1f} s")
    return PaddedStates(states, lengths)


@contextlib.contextmanager
def deterministic_torch(num_threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the block; the previous settings after it."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _batch(padded: PaddedStates, rows: np.ndarray):
    """(hidden states, attention mask) tensors of rows, cut to their longest prompt."""
    import torch

    width = int(padded.lengths[rows].max())
    mask = (np.arange(width)[None, :] < padded.lengths[rows][:, None]).astype(np.int64)
    return torch.from_numpy(padded.states[rows, :width]), torch.from_numpy(mask)


def _loss(model_scores, table: PromptTable, batch: np.ndarray, settings: FinetuneSettings):
    """Regression + ranking_weight x pairwise + soft_pair_weight x soft pairs (finetune_loss.py)."""
    import torch

    from services.predictor.finetune_loss import pairwise_loss, regression_loss, soft_pairwise_loss

    targets = torch.from_numpy(table.log_targets[batch]).float()
    loss = regression_loss(model_scores, targets)
    if settings.ranking_weight > 0:
        loss = loss + settings.ranking_weight * pairwise_loss(model_scores, targets)
    if settings.soft_pair_weight > 0 and table.soft_targets is not None and table.soft_columns:
        soft = torch.from_numpy(table.soft_targets[batch]).float()
        score = model_scores[:, list(table.soft_columns)].mean(dim=1)
        loss = loss + settings.soft_pair_weight * soft_pairwise_loss(score, soft)
    return loss


def _optimizer(model, settings: FinetuneSettings, num_steps: int):
    """AdamW with separate layer and head rates; linear warm-up, then linear decay to zero."""
    import torch

    layers = [p for name, p in model.named_parameters() if name.startswith("layers.")]
    others = [p for name, p in model.named_parameters() if not name.startswith("layers.")]
    optimizer = torch.optim.AdamW(
        [{"params": layers, "lr": settings.layer_learning_rate}, {"params": others, "lr": settings.head_learning_rate}],
        weight_decay=settings.weight_decay,
    )
    warmup = max(1.0, settings.warmup_fraction * num_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, step / warmup) * max(0.0, (num_steps - step) / num_steps)
    )
    return optimizer, schedule


def fit_top(
    base,
    settings: FinetuneSettings,
    padded: PaddedStates,
    table: PromptTable,
    rows: np.ndarray,
    progress: Progress,
    label: str,
):
    """A TopEncoder trained on the given table rows (deterministic for the seed)."""
    import torch

    log_targets = table.log_targets
    known = ~np.isnan(log_targets[rows])
    initial_bias = np.nansum(log_targets[rows], axis=0) / np.maximum(known.sum(axis=0), 1)  # mean per generator
    model = new_top_encoder(base, log_targets.shape[1], settings, initial_bias)
    num_steps = settings.num_epochs * -(-len(rows) // settings.batch_size)
    optimizer, schedule = _optimizer(model, settings, num_steps)
    order = np.random.default_rng(settings.seed)
    for epoch in range(settings.num_epochs):
        model.train()
        started, total = time.perf_counter(), 0.0
        shuffled = order.permutation(rows)
        for begin in range(0, len(shuffled), settings.batch_size):
            batch = np.sort(shuffled[begin : begin + settings.batch_size])
            loss = _loss(model(*_batch(padded, batch)), table, batch, settings)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        progress(
            f"  encoder {label}, epoch {epoch + 1}/{settings.num_epochs}: loss {total / len(rows):.4f}, "
            f"{time.perf_counter() - started:.0f} s"
        )
    return model.eval()


def score_rows(model, padded: PaddedStates, rows: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """float32 [len(rows), G] torch scores (padding masked, so the same as prompt by prompt)."""
    import torch

    result = np.zeros((len(rows), model.head.out_features), np.float32)
    with torch.no_grad():
        for begin in range(0, len(rows), batch_size):
            chunk = rows[begin : begin + batch_size]
            result[begin : begin + len(chunk)] = model(*_batch(padded, chunk)).numpy()
    return result


def out_of_fold_scores(
    base, settings: FinetuneSettings, table: PromptTable, padded: PaddedStates, progress: Progress
) -> np.ndarray:
    """float32 [n, G]: each prompt scored by the encoder fitted without its fold."""
    folds = np.array(
        [data.group_fold(group, num_folds=settings.num_folds, seed=settings.seed) for group in table.group_ids]
    )
    scores = np.zeros(table.log_targets.shape, np.float32)
    for fold in range(settings.num_folds):
        inside, outside = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
        if inside.size == 0:
            continue
        if outside.size == 0:
            raise ValueError(f"all {len(table.texts)} training prompts fall in one fold: too few to fine-tune")
        label = f"fold {fold + 1}/{settings.num_folds}"
        model = fit_top(base, settings, padded, table, outside, progress, label)
        scores[inside] = score_rows(model, padded, inside)
    return scores


def max_onnx_score_difference(num_frozen_layers: int) -> float:
    """The largest int8-vs-torch score gap a sound export shows with this many layers frozen (retrained ones are
    quantized in the top graph): 0.2 for the top two, 0.4 for all six."""
    return MAX_ONNX_SCORE_DIFFERENCE_BASE + MAX_ONNX_SCORE_DIFFERENCE_PER_LAYER * (NUM_LAYERS - num_frozen_layers)


def train_encoder(
    settings: FinetuneSettings,
    examples: Sequence[data.LengthExample],
    generators: Sequence[str],
    bottom: FrozenBottom,
    progress: Progress,
    soft_lengths: dict[str, np.ndarray] | None = None,
) -> TrainedEncoder:
    """Out-of-fold scores of the training examples and the final encoder's graph (see the module doc)."""
    from services.predictor.finetune_export import export_top_graph, max_score_difference

    if bottom.spec.num_frozen_layers != settings.num_frozen_layers:
        raise ValueError(
            f"the bottom graph freezes {bottom.spec.num_frozen_layers} layers, the settings {settings.num_frozen_layers}"
        )
    started = time.perf_counter()
    table = with_soft_targets(prompt_table(examples, generators), soft_lengths, generators)
    padded = bottom_states(bottom, table.texts, settings.num_threads, progress)
    with deterministic_torch(settings.num_threads):
        base = load_base_encoder()
        scores = out_of_fold_scores(base, settings, table, padded, progress)
        final = fit_top(base, settings, padded, table, np.arange(len(table.texts)), progress, "final")
    top_graph = export_top_graph(final)
    check = np.arange(min(NUM_CHECK_PROMPTS, len(table.texts)))
    difference = max_score_difference(final, top_graph, [padded.states[row, : padded.lengths[row]] for row in check])
    bound = max_onnx_score_difference(settings.num_frozen_layers)
    if difference > bound:
        raise RuntimeError(f"exported encoder differs from torch by {difference:.3f} (log tokens; bound {bound:.2f})")
    elapsed_s = time.perf_counter() - started
    progress(
        f"fine-tuned encoder: {len(table.texts)} prompts, {settings.num_folds} folds + final, "
        f"{elapsed_s:.0f} s; int8 graph {len(top_graph) / 1e6:.1f} MB, max |ONNX - torch| {difference:.3f}"
    )
    details = {
        "settings": dataclasses.asdict(settings),
        "num_prompts": len(table.texts),  # no timings: reproducible
        "onnx_vs_torch_max_score_difference": difference,
    }
    return TrainedEncoder(top_graph, scores[table.row_of_example], details)


@dataclass(frozen=True)
class EncoderColumns:
    """A trained encoder with its scores of the training and held-out examples (train.py's input)."""

    top_graph: bytes  # the final encoder's int8 ONNX graph (encoder.onnx)
    train_scores: np.ndarray  # float32 [num_train, G]: out-of-fold torch scores
    heldout_scores: np.ndarray  # float32 [num_heldout, G]: the final encoder's ONNX scores, as served
    details: dict[str, object]  # recorded in metadata.json


def encoder_columns(
    settings: FinetuneSettings,
    train: Sequence[data.LengthExample],
    heldout: Sequence[data.LengthExample],
    generators: Sequence[str],
    cache_dir: Path,
    progress: Progress,
    soft_lengths: dict[str, np.ndarray] | None = None,
    word_pieces: int = DEFAULT_WORD_PIECES,
) -> EncoderColumns:
    """Trains the encoder on train and scores held-out prompts through its exported graphs
    (both on the head + tail window of word_pieces)."""
    from services.predictor.finetune_encoder import EncoderSpec, FinetunedEncoder

    spec = EncoderSpec(num_frozen_layers=settings.num_frozen_layers, max_tokens=word_pieces)
    bottom = FrozenBottom(spec, cache_dir=cache_dir, allow_cuda=False)
    trained = train_encoder(settings, train, generators, bottom, progress, soft_lengths)
    encoder = FinetunedEncoder(bottom, trained.top_graph, num_threads=settings.num_threads, allow_cuda=False)
    try:
        unique = list(dict.fromkeys(example.prompt_text for example in heldout))
        scores = dict(zip(unique, encoder.embed(unique)))
    finally:
        encoder.close()
    heldout_scores = np.array([scores[example.prompt_text] for example in heldout], np.float32)
    return EncoderColumns(
        trained.top_graph, trained.train_scores, heldout_scores.reshape(len(heldout), len(generators)), trained.details
    )
