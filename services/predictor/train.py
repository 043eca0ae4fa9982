"""Offline training of the length model: data -> input rows -> XGBoost heads -> ONNX -> artifact.

    examples (ShareGPT, AlpacaEval generators, feedback)  --split by group hash-->  train | held-out
    fine-tuned encoder (finetune_train.py, default): out-of-fold scores on train -> encoder.onnx
    text heads (text_heads.py): out-of-fold on train, final fit on all of train -> text_heads.npz
    tree rows = lexical | text heads | generator one-hot   (model_inputs.py, assembled in train_rows.py)
    train -> fit | early-stopping (another hash); XGBoost heads (heads.py)
        -> one ONNX graph (export.py) -> checked against XGBoost -> model.onnx, metadata.json (train_metadata.py)
    baselines (baselines.py) fitted on train; held-out metrics of model and baselines (evaluate.py)

Deterministic for a given seed, data, thread count and embedding graph: split, subsample and
XGBoost are seeded, and the artifact contains no timestamp.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from services.predictor import data
from services.predictor.artifact import QUANTILE_LEVELS, ModelMetadata, write_artifact
from services.predictor.baselines import Baselines, fit_prompt_length_bins
from services.predictor.embedding import DEFAULT_WORD_PIECES, EmbeddingSpec, PromptEmbedder, default_cache_dir
from services.predictor.embedding_cache import EmbeddingCache
from services.predictor.evaluate import EvalRows, metrics_by_split, predict_all
from services.predictor.finetune_model import NUM_FROZEN_LAYERS
from services.predictor.heads import TreeSettings, check_onnx_matches_xgboost, fit_heads
from services.predictor.model_inputs import InputLayout
from services.predictor.train_metadata import training_metadata
from services.predictor.train_rows import Progress, RawRows, concat_rows, raw_rows, stacked_rows

MAX_WORD_PIECES = 512  # MiniLM's position embeddings


@dataclass(frozen=True)
class TrainSettings:
    """What `train` reads, how it splits, and how big the model may grow."""

    data_dir: Path  # the shared data folder (README there)
    out_dir: Path  # where model.onnx and metadata.json are written
    seed: int = 0  # seeds split, subsampling and XGBoost
    generators: tuple[str, ...] = ()  # AlpacaEval generators whose answers are added
    use_sharegpt: bool = True  # include the ShareGPT first turns
    feedback_dir: Path | None = None  # add the served model's recorded lengths (feedback_train.py)
    include_censored: bool = False  # feedback finished by LENGTH counts with its cap as length
    default_generator: str = ""  # generator served when a request names none; "" = first source
    use_embedding: bool = True  # False: lexical features only (faster, weaker)
    finetune_encoder: bool = True  # with use_embedding: fine-tune MiniLM's top layers (finetune_*.py), no frozen ridge
    finetune_folds: int = 3  # out-of-fold encoders scoring the training rows for the trees
    cache_dir: Path | None = None  # embedding graph and vector cache; None = default_cache_dir()
    heldout_fraction: float = 0.2  # share of prompt groups held out for the printed metrics
    max_examples: int = 0  # subsample to at most this many examples before splitting; 0 = all
    num_threads: int = 2  # XGBoost and ONNX Runtime threads
    max_trees: int = 600  # boosting rounds per head (fewer with early stopping)
    max_depth: int = 6  # depth of each tree
    calibrate: bool = True  # shift p10 / p90 per family and bin of predicted p50 (calibration*.py)
    ranking_weight: float = 1.0  # encoder: pairwise ranking next to regression (finetune_loss.py)
    soft_pair_weight: float = 1.0  # encoder: soft pairs from AlpacaEval's 227 generators (with --generator only)
    content_features: bool = False  # add the content columns (content_features.py: code, URLs, tables, pastes)
    finetune_frozen_layers: int = (
        NUM_FROZEN_LAYERS  # encoder: MiniLM layers left frozen (0 = retrain all six; finetune_model.py)
    )
    # MiniLM's head + tail window (embedding.py), trained on and recorded in the encoder / embedding
    # version, so the model serves with it; a longer one costs CPU per prompt (by-prompt-text README, 8)
    word_pieces: int = DEFAULT_WORD_PIECES

    def __post_init__(self) -> None:
        if not self.use_sharegpt and not self.generators and self.feedback_dir is None:
            raise ValueError("nothing to train on: ShareGPT is off, no --generator and no --from-feedback")
        if self.max_trees < 1 or self.max_depth < 1 or self.num_threads < 1:
            raise ValueError("max_trees, max_depth and num_threads must be >= 1")
        if self.finetune_folds < 2:
            raise ValueError(f"finetune_folds must be >= 2, got {self.finetune_folds}")
        if not 4 <= self.word_pieces <= MAX_WORD_PIECES:
            raise ValueError(f"word_pieces must be in [4, {MAX_WORD_PIECES}], got {self.word_pieces}")

    def tree_settings(self) -> TreeSettings:
        return TreeSettings(self.seed, self.num_threads, self.max_trees, self.max_depth)


@dataclass(frozen=True)
class TrainingData:
    """Everything `load_examples` read."""

    examples: list[data.LengthExample]  # every selected source's examples
    file_hashes: dict[str, str]  # data file -> sha256
    served_model_generators: dict[str, str]  # from feedback: served model -> generator column
    default_generator: str  # the generator to serve by default (feedback's, else the first source's)


def load_examples(settings: TrainSettings) -> TrainingData:
    """The examples of every selected source, with their provenance."""
    examples: list[data.LengthExample] = []
    hashes: dict[str, str] = {}
    if settings.use_sharegpt:
        examples += data.load_sharegpt(settings.data_dir)
        hashes[data.SHAREGPT_FILE] = data.file_sha256(settings.data_dir / data.SHAREGPT_FILE)
    if settings.generators:
        examples += data.load_alpaca_eval(settings.data_dir, settings.generators)
        hashes[data.ALPACA_EVAL_FILE] = data.file_sha256(settings.data_dir / data.ALPACA_EVAL_FILE)
    if _uses_soft_pairs(settings):
        hashes[data.ALL_GENERATOR_LENGTHS_FILE] = data.file_sha256(settings.data_dir / data.ALL_GENERATOR_LENGTHS_FILE)
    served_models: dict[str, str] = {}
    default = settings.default_generator or (examples[0].source if examples else "")
    if settings.feedback_dir is not None:
        from services.predictor.feedback_train import load_feedback_examples

        feedback = load_feedback_examples(settings.feedback_dir, include_censored=settings.include_censored)
        examples += feedback.examples
        hashes.update(feedback.file_hashes)
        served_models = feedback.served_model_generators
        default = settings.default_generator or feedback.most_common_generator
    return TrainingData(data.canonical_groups(examples), hashes, served_models, default)


def _uses_soft_pairs(settings: TrainSettings) -> bool:
    """Soft pairs need the fine-tuned encoder and AlpacaEval columns (their instructions have the lengths)."""
    return (
        settings.soft_pair_weight > 0
        and settings.use_embedding
        and settings.finetune_encoder
        and bool(settings.generators)
    )


def embedding_source(settings: TrainSettings) -> EmbeddingCache | None:
    """The training-time embedding cache, or None when the model is lexical only."""
    if not settings.use_embedding or settings.finetune_encoder:
        return None
    cache_dir = settings.cache_dir or default_cache_dir()
    spec = EmbeddingSpec(max_tokens=settings.word_pieces)
    embedder = PromptEmbedder(spec, cache_dir=cache_dir, num_threads=settings.num_threads, allow_cuda=False)
    return EmbeddingCache(embedder, cache_dir)


def fit_baselines(rows: EvalRows) -> Baselines:
    """Both baselines per generator, from training rows only."""
    generators = np.asarray(rows.generators)
    return Baselines(
        quantile_levels=QUANTILE_LEVELS,
        by_generator={
            name: fit_prompt_length_bins(
                rows.prompt_tokens[generators == name], rows.actual_tokens[generators == name], QUANTILE_LEVELS
            )
            for name in sorted(set(rows.generators))
        },
    )


def _layout(settings: TrainSettings, examples: Sequence[data.LengthExample], default: str) -> InputLayout:
    generators = tuple(sorted({example.source for example in examples}))
    if default not in generators:
        raise ValueError(f"default generator {default!r} is not among the training sources {list(generators)}")
    if settings.use_embedding and settings.finetune_encoder:
        from services.predictor.finetune_encoder import EncoderSpec

        spec = EncoderSpec(num_frozen_layers=settings.finetune_frozen_layers, max_tokens=settings.word_pieces)
        return InputLayout("", generators, encoder_version=spec.version, content_features=settings.content_features)
    version = EmbeddingSpec(max_tokens=settings.word_pieces).version if settings.use_embedding else ""
    return InputLayout(version, generators, content_features=settings.content_features)


def fit_encoder(settings: TrainSettings, train: RawRows, heldout: RawRows, layout: InputLayout, progress: Progress):
    """(train rows, held-out rows with the encoder's scores as their 'embedding', EncoderColumns)."""
    from services.predictor.finetune_model import FinetuneSettings
    from services.predictor.finetune_train import encoder_columns

    finetune = FinetuneSettings(
        seed=settings.seed,
        num_threads=settings.num_threads,
        num_folds=settings.finetune_folds,
        ranking_weight=settings.ranking_weight,
        soft_pair_weight=settings.soft_pair_weight,
        num_frozen_layers=settings.finetune_frozen_layers,
    )
    soft_lengths = None
    if _uses_soft_pairs(settings):  # training instructions only: held-out texts never lend lengths
        _, all_lengths = data.load_all_generator_lengths(settings.data_dir)
        train_texts = {example.prompt_text for example in train.examples}
        soft_lengths = {text: lengths for text, lengths in all_lengths.items() if text in train_texts}
    columns = encoder_columns(
        finetune,
        train.examples,
        heldout.examples,
        layout.generators,
        settings.cache_dir or default_cache_dir(),
        progress,
        soft_lengths,
        word_pieces=settings.word_pieces,
    )
    return (
        dataclasses.replace(train, embedding=columns.train_scores),
        dataclasses.replace(heldout, embedding=columns.heldout_scores),
        columns,
    )


def run_training(settings: TrainSettings, progress: Progress = print) -> ModelMetadata:
    """Trains, exports, checks, evaluates and writes the artifact; returns its metadata."""
    from services.predictor.export import merge_heads
    from services.predictor.model import LengthModel

    started = time.perf_counter()
    loaded = load_examples(settings)
    examples = data.subsample(loaded.examples, max_examples=settings.max_examples, seed=settings.seed)
    train, heldout = data.split_by_group(examples, heldout_fraction=settings.heldout_fraction, seed=settings.seed)
    progress(f"{len(examples)} examples: train {len(train)} (10% of it for early stopping), held-out {len(heldout)}")
    layout = _layout(settings, examples, loaded.default_generator)
    cache = embedding_source(settings)
    train_raw, heldout_raw = raw_rows(layout, train, cache, progress), raw_rows(layout, heldout, cache, progress)
    encoder_bytes, encoder_details = b"", {}
    if layout.encoder_version:
        train_raw, heldout_raw, encoder = fit_encoder(settings, train_raw, heldout_raw, layout, progress)
        encoder_bytes, encoder_details = encoder.top_graph, encoder.details
    heads_fitted, fit_rows, valid_rows, heldout_rows = stacked_rows(
        settings.seed, layout, train_raw, heldout_raw, progress
    )
    progress(
        f"{layout.num_columns} tree input columns ({layout.input_version}) after {time.perf_counter() - started:.1f} s"
    )
    heads = fit_heads(
        settings.tree_settings(),
        (fit_rows.matrix, fit_rows.actual_tokens),
        (valid_rows.matrix, valid_rows.actual_tokens),
        progress,
    )
    onnx_bytes = merge_heads(heads, layout.num_columns).SerializeToString()
    heads_bytes = heads_fitted.to_bytes()
    baselines = fit_baselines(concat_rows(fit_rows, valid_rows))
    extra = {
        "served_model_generators": loaded.served_model_generators,
        "data_files_sha256": loaded.file_hashes,
        "heldout_metrics": {},
        "baselines": baselines.to_dict(),
        "num_examples": {
            "fit": len(fit_rows.sources),
            "early_stopping": len(valid_rows.sources),
            "heldout": len(heldout),
        },
        "num_trees": {head.output_name: head.booster.num_boosted_rounds() for head in heads},
        "onnx_vs_xgboost_max_relative_difference": check_onnx_matches_xgboost(onnx_bytes, heads, heldout_rows.matrix),
        "finetuned_encoder": encoder_details,
        "quantile_calibration": {},
    }
    payloads = (onnx_bytes, heads_bytes, encoder_bytes)
    metadata = training_metadata(settings, layout, loaded.default_generator, payloads, dict(extra))
    write_artifact(settings.out_dir, onnx_bytes, heads_bytes, metadata, encoder_bytes)
    model = LengthModel(settings.out_dir, intra_op_threads=settings.num_threads, allow_cuda=False)
    if settings.calibrate:
        calibration = _calibration(settings, fit_rows, valid_rows, model, progress)
        metadata = training_metadata(
            settings,
            layout,
            loaded.default_generator,
            payloads,
            extra | {"quantile_calibration": calibration.to_dict()},
        )
        write_artifact(settings.out_dir, onnx_bytes, heads_bytes, metadata, encoder_bytes)
        model = LengthModel(settings.out_dir, intra_op_threads=settings.num_threads, allow_cuda=False)
    metrics = metrics_by_split(heldout_rows, predict_all(model, baselines, heldout_rows), QUANTILE_LEVELS)
    metadata = dataclasses.replace(metadata, heldout_metrics=metrics)
    write_artifact(settings.out_dir, onnx_bytes, heads_bytes, metadata, encoder_bytes)
    progress(
        f"wrote {metadata.model_version} ({len(onnx_bytes) / 1e6:.2f} MB) to {settings.out_dir} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return metadata


def _calibration(settings: TrainSettings, fit_rows: EvalRows, valid_rows: EvalRows, model, progress: Progress):
    """The calibration step's table (calibration.py) from out-of-fold quantiles of the fit rows and the
    final trees' quantiles of the early-stopping rows (neither fitted by the trees that predict them)."""
    from services.predictor.artifact import quantile_output_name
    from services.predictor.calibration import fit_calibration
    from services.predictor.calibration_train import out_of_fold_quantiles

    names = [quantile_output_name(level) for level in QUANTILE_LEVELS]
    fit_quantiles = out_of_fold_quantiles(settings.tree_settings(), fit_rows, valid_rows, names, progress)
    rows = concat_rows(fit_rows, valid_rows)
    quantiles = np.concatenate([fit_quantiles, model.predict_matrix(valid_rows.matrix, raw=True)[1]])
    return fit_calibration(rows.actual_tokens, quantiles, QUANTILE_LEVELS, rows.generators)
