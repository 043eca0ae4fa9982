"""Early-exit heads (services/engine/spec/exit_heads.py): the untrained baseline equals the model's own
prediction at full depth, artifacts round-trip byte-identically and refuse corruption and other
models, best_layer follows the stated speedup formula, and the shipped SmolLM2 heads reach the
agreement their artifact claims on held-out prompts (skipped without the model or ../shared/data)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from services.common.model_catalog import DEFAULT_MODEL, DUMMY_TINY_MODEL, SMOLLM2_135M_INSTRUCT
from services.engine.model_loader import load_model
from services.engine.spec import exit_head_data as data
from services.engine.spec.exit_head_artifact import (
    ExitHeadArtifact,
    ExitHeadArtifactError,
    HeadArrays,
    artifact_paths,
    read_artifact,
    write_artifact,
)
from services.engine.spec.exit_head_fingerprint import ExitHeadsMismatch, check_fingerprint, model_fingerprint
from services.engine.spec.exit_head_training import HeadTrainingConfig, ModelHead, draft_vocabulary, train_head
from services.engine.spec.exit_heads import (
    ExitHeadSet,
    ExitHeadsUnavailable,
    expected_tokens_per_verify,
    heads_from_artifact,
    load_exit_heads,
    untrained_exit_heads,
)
from tests.shared_data import SHARED_DATA_DIR

SMOLLM2_DIR = SMOLLM2_135M_INSTRUCT.install_dir()
requires_smollm2 = pytest.mark.skipif(
    not (SMOLLM2_DIR / "config.json").is_file(), reason=f"SmolLM2 not converted at {SMOLLM2_DIR}"
)


@functools.lru_cache(maxsize=2)
def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.set_num_threads(1)
    return load_model(DUMMY_TINY_MODEL, dtype=torch.float32, device=torch.device("cpu"), seed=seed).model


def _last_layer_stream(model: torch.nn.Module, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual stream after the last decoder layer, before the final norm; the model's logits)."""
    captured = {}
    hook = model.model.layers[-1].register_forward_hook(lambda module, args, output: captured.update(out=output))
    try:
        with torch.inference_mode():
            logits = model(token_ids[None]).logits[0]
    finally:
        hook.remove()
    stream = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    return stream[0], logits


def _tiny_artifact(model: torch.nn.Module, layers=(1, 3), rank: int = 8) -> ExitHeadArtifact:
    generator = np.random.default_rng(0)
    hidden = model.config.hidden_size
    heads = {
        layer: HeadArrays(
            (generator.standard_normal((rank, hidden)) * 0.1).astype(np.float16),
            (generator.standard_normal((hidden, rank)) * 0.1).astype(np.float16),
        )
        for layer in layers
    }
    agreement = {str(layer): 0.1 * layer for layer in layers}
    metadata = {
        "model": DUMMY_TINY_MODEL,
        "fingerprint": model_fingerprint(model),
        "agreement": {"trained": agreement, "untrained": agreement},
        "costs": {"draft_cost_ratio": {str(layer): 0.2 * layer for layer in layers}, "verify_cost_ratio": {"2": 1.1}},
    }
    return ExitHeadArtifact(metadata, heads, np.arange(0, 2000, 3, dtype=np.int32))


def test_untrained_head_at_full_depth_is_the_models_own_prediction():
    model = _tiny()
    token_ids = torch.tensor([1, 415, 2936, 9060, 285, 1142, 28705, 13, 7, 99])
    stream, logits = _last_layer_stream(model, token_ids)
    depth = model.config.num_hidden_layers
    heads = untrained_exit_heads(model, [1, depth])
    drafts = heads.head(depth).draft_token_ids(stream)
    assert drafts.dtype == torch.int64 and drafts.shape == (len(token_ids),)
    assert torch.equal(drafts, logits.argmax(dim=-1))
    assert heads.layers == (1, depth) and heads.best_layer(2) == depth  # no agreement measured: deepest
    assert heads.draft_cost[1] < heads.draft_cost[depth] <= 1.0


def test_invalid_layers_name_the_valid_ones():
    heads = untrained_exit_heads(_tiny(), [2, 3])
    with pytest.raises(ValueError, match=r"valid layers: \[2, 3\]"):
        heads.head(1)
    with pytest.raises(ValueError, match="exit layers must be in"):
        untrained_exit_heads(_tiny(), [0, 2])
    with pytest.raises(ValueError, match="num_draft_tokens"):
        heads.best_layer(0)


def test_tiny_model_has_no_trained_heads():
    with pytest.raises(ExitHeadsUnavailable, match="no trained exit heads"):
        load_exit_heads(_tiny(), DUMMY_TINY_MODEL)


def test_artifact_round_trip_is_byte_identical_and_drafts_in_the_draft_vocab(tmp_path):
    model = _tiny()
    artifact = _tiny_artifact(model)
    npz_a, _ = write_artifact(tmp_path / "a", DUMMY_TINY_MODEL, artifact)
    npz_b, json_b = write_artifact(tmp_path / "b", DUMMY_TINY_MODEL, artifact)
    assert npz_a.read_bytes() == npz_b.read_bytes()
    loaded = read_artifact(npz_b, json_b)
    check_fingerprint(model, loaded.metadata["fingerprint"], json_b.name)
    heads = heads_from_artifact(model, loaded)
    hidden = torch.randn(5, model.config.hidden_size)
    head = heads.head(3)
    drafts = head.draft_token_ids(hidden)
    assert drafts.dtype == torch.int64 and drafts.shape == (5,)
    assert torch.isin(drafts, torch.arange(0, 2000, 3)).all()
    down, up = (torch.from_numpy(a).float() for a in (artifact.heads[3].down, artifact.heads[3].up))
    mapped = hidden + hidden @ down.T @ up.T
    norm = model.model.norm
    logits = torch.nn.functional.rms_norm(mapped, norm.weight.shape, norm.weight, norm.variance_epsilon)
    rows = torch.arange(0, 2000, 3)
    assert torch.equal(drafts, rows[(logits @ model.lm_head.weight[rows].T).argmax(dim=-1)])
    assert head.norm_weight.data_ptr() == model.model.norm.weight.data_ptr()  # a view, not a copy


def test_corrupt_npz_and_another_model_are_refused(tmp_path):
    model = _tiny()
    npz_path, json_path = write_artifact(tmp_path, DUMMY_TINY_MODEL, _tiny_artifact(model))
    stored = read_artifact(npz_path, json_path).metadata["fingerprint"]
    with pytest.raises(ExitHeadsMismatch, match="weights differ"):
        check_fingerprint(_tiny(seed=1), stored, json_path.name)  # same shape, other weights
    other = dict(stored, config=dict(stored["config"], num_hidden_layers=30))
    with pytest.raises(ExitHeadsMismatch, match="num_hidden_layers"):
        check_fingerprint(model, other, json_path.name)
    payload = bytearray(npz_path.read_bytes())
    payload[-40] ^= 0xFF
    npz_path.write_bytes(bytes(payload))
    with pytest.raises(ExitHeadArtifactError, match="sha256"):
        read_artifact(npz_path, json_path)


def test_best_layer_maximises_the_stated_speedup():
    assert expected_tokens_per_verify(0.0, 4) == 1.0
    assert expected_tokens_per_verify(1.0, 4) == 5.0
    assert expected_tokens_per_verify(0.5, 2) == pytest.approx(1.75)
    heads = untrained_exit_heads(_tiny(), [1, 2, 3])
    table = ExitHeadSet(heads.heads, {1: 0.2, 2: 0.6, 3: 0.7}, {1: 0.1, 2: 0.2, 3: 0.9}, {2: 1.2})
    assert table.speedup(2, 2) == pytest.approx(expected_tokens_per_verify(0.6, 2) / (2 * 0.2 + 1.2))
    assert table.best_layer(2) == 2


def test_break_even_agreement_is_where_drafting_stops_paying():
    heads = untrained_exit_heads(_tiny(), [1, 2, 3])
    table = ExitHeadSet(heads.heads, {}, {1: 0.1, 2: 0.2, 3: 0.95}, {2: 1.2})
    for layer in (1, 2):
        break_even = table.break_even_agreement(layer, 2)
        table.agreement[layer] = break_even
        assert table.speedup(layer, 2) == pytest.approx(1.0, abs=1e-6)
    assert table.break_even_agreement(3, 2) == 1.0  # 2 x 0.95 + 1.2 = 3.1 > the 3 tokens of a = 1: never pays


def test_training_is_deterministic_and_beats_the_identity_map():
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    hidden, vocab = 32, 64
    parts = ModelHead(torch.ones(hidden), 1e-6, torch.randn(vocab, hidden, generator=generator))
    inputs = torch.randn(512, hidden, generator=generator)
    teacher = inputs @ torch.randn(hidden, hidden, generator=generator)  # the "later layers": a fixed mix
    config = HeadTrainingConfig(rank=16, num_epochs=30, batch_size=64, learning_rate=1e-2)
    first, second = train_head(parts, inputs, teacher, config), train_head(parts, inputs, teacher, config)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    targets = (teacher @ parts.draft_weight.T).argmax(dim=-1)
    before = ((inputs @ parts.draft_weight.T).argmax(dim=-1) == targets).float().mean()
    mapped = inputs + inputs @ first[0].T @ first[1].T
    after = ((mapped @ parts.draft_weight.T).argmax(dim=-1) == targets).float().mean()
    assert after > before + 0.2
    assert draft_vocabulary(torch.tensor([5, 5, 5, 2, 2, 9, 1]), 2).tolist() == [2, 5]


def test_held_out_split_is_by_normalized_prompt_text():
    assert data.normalized_prompt("  Hello\tWORLD \n") == data.normalized_prompt("hello world")
    same = [data.Conversation("Tell me a Joke", "a"), data.Conversation("tell  me a joke ", "b")]
    others = [data.Conversation(f"prompt {i}", "r") for i in range(200)]
    train, heldout = data.split_and_sample(same + others, heldout_fraction=0.3, num_train=999, num_heldout=999, seed=0)
    sides = {id(c): c in heldout for c in same}
    assert len(set(sides.values())) == 1  # both spellings on one side
    assert 20 < len(heldout) < 110 and len(train) + len(heldout) == 202


@requires_smollm2
def test_shipped_heads_load_for_smollm2_in_bf16_and_refuse_changed_weights():
    loaded = load_model(DEFAULT_MODEL, dtype=torch.bfloat16, device=torch.device("cpu"), seed=0)
    heads = load_exit_heads(loaded.model, DEFAULT_MODEL)
    assert heads.layers and all(0.0 < heads.agreement[layer] < 1.0 for layer in heads.layers)
    drafts = heads.head(heads.layers[0]).draft_token_ids(torch.randn(4, 576, dtype=torch.bfloat16))
    assert drafts.dtype == torch.int64 and drafts.shape == (4,) and int(drafts.max()) < 49152
    with torch.no_grad():
        loaded.model.model.norm.weight.mul_(1.5)
    with pytest.raises(ExitHeadsMismatch, match="weights differ"):
        load_exit_heads(loaded.model, DEFAULT_MODEL)


@requires_smollm2
@pytest.mark.skipif(not SHARED_DATA_DIR.is_dir(), reason=f"../shared/data not found: {SHARED_DATA_DIR}")
def test_shipped_heads_reach_the_claimed_agreement_on_held_out_prompts():
    from services.common.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    loaded = load_model(DEFAULT_MODEL, dtype=torch.float32, device=torch.device("cpu"), seed=0)
    heads = load_exit_heads(loaded.model, DEFAULT_MODEL)
    metadata = read_artifact(*artifact_paths(_shipped_dir(), DEFAULT_MODEL)).metadata
    recipe = metadata["recipe"]
    _, heldout = data.split_and_sample(
        data.read_conversations(SHARED_DATA_DIR),
        heldout_fraction=recipe["heldout_fraction"],
        num_train=0,
        num_heldout=6,
        seed=recipe["seed"],
    )
    limits = {"max_prompt_tokens": recipe["max_prompt_tokens"], "max_reply_tokens": recipe["max_reply_tokens"]}
    tokenizer = load_tokenizer(loaded.tokenizer)
    encoded = [e for e in (data.encode(tokenizer, c, **limits) for c in heldout) if e is not None]
    examples = data.distill(loaded.model, encoded, heads.layers)  # ~500 reply positions
    for layer in heads.layers:
        drafts = heads.head(layer).draft_token_ids(examples.hidden[layer])  # the raw stream, as the engine gives
        measured = float((drafts == examples.target_ids).float().mean())
        claimed = metadata["agreement"]["trained"][str(layer)]
        assert abs(measured - claimed) < 0.07, (layer, measured, claimed)  # 2026-12: within 0.04 at every layer


def _shipped_dir():
    from services.engine.spec.exit_head_artifact import SHIPPED_DIR

    return SHIPPED_DIR
