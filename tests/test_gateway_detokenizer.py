"""IncrementalDetokenizer with the Mistral SentencePiece and SmolLM2 byte-level BPE tokenizers: multi-byte characters,
arbitrary chunking, invalid bytes, and a bounded decode window."""

from __future__ import annotations

import random

import pytest

from services.common.tokenizer import load_tokenizer
from services.gateway.detokenizer import IncrementalDetokenizer

TOKENIZER = load_tokenizer("default")
PROMPT_IDS = TOKENIZER.encode("Translate:", add_bos=True)
TEXTS = [
    "Hello world, plain ASCII.",
    "naïve café — 世界 日本語のテキスト。",
    "emoji 🎉😀 and byte-fallback ones 🦜🪿 ꙮ 𝔘𝔫𝔦",
    "𝔘𝔫𝔦",  # starts with byte tokens right away
    "a\n\n  b\tc   end",
]


def byte_token(value: int) -> int:
    return TOKENIZER._processor.piece_to_id(f"<0x{value:02X}>")


def run_chunks(output_ids: list[int], chunk_sizes: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(TOKENIZER, PROMPT_IDS)
    deltas, start = [], 0
    for size in chunk_sizes:
        deltas.append(detokenizer.add(output_ids[start : start + size]))
        start += size
    deltas.append(detokenizer.flush())
    return deltas


def expected_text(output_ids: list[int]) -> str:
    return TOKENIZER.decode(PROMPT_IDS + output_ids)[len(TOKENIZER.decode(PROMPT_IDS)) :]


def test_texts_use_byte_fallback_tokens():
    """Guard: the test texts really split characters over byte tokens (else the test proves little)."""
    ids = TOKENIZER.encode("𝔘", add_bos=False)
    assert byte_token(0xF0) in ids and TOKENIZER.decode(ids[:2]).endswith("\ufffd")


@pytest.mark.parametrize("text", TEXTS)
def test_one_id_at_a_time_matches_full_decode_without_replacement_chars(text):
    output_ids = TOKENIZER.encode(text, add_bos=False)
    deltas = run_chunks(output_ids, [1] * len(output_ids))
    assert "".join(deltas) == expected_text(output_ids)
    assert not any("\ufffd" in delta for delta in deltas)


@pytest.mark.parametrize("text", TEXTS)
def test_random_chunking_matches_full_decode(text):
    output_ids = TOKENIZER.encode(text, add_bos=False)
    rng = random.Random(7)
    for _ in range(30):
        sizes = [rng.randint(1, 5) for _ in range(len(output_ids))]
        deltas = run_chunks(output_ids, sizes)
        assert "".join(deltas) == expected_text(output_ids)
        assert not any("\ufffd" in delta for delta in deltas)


def test_first_output_token_keeps_its_leading_space():
    output_ids = TOKENIZER.encode("world", add_bos=False)  # "▁world"
    assert "".join(run_chunks(output_ids, [1] * len(output_ids))).startswith(" world")


def test_partial_character_is_held_then_emitted_whole():
    output_ids = TOKENIZER.encode("ok 🦜", add_bos=False)
    detokenizer = IncrementalDetokenizer(TOKENIZER, PROMPT_IDS)
    parrot_bytes = output_ids[-4:]
    assert parrot_bytes == [byte_token(b) for b in "🦜".encode()]
    assert detokenizer.add(output_ids[:-4]) == " ok "  # "▁ok", "▁"
    held = [detokenizer.add([token_id]) for token_id in parrot_bytes]
    assert held == ["", "", "", "🦜"]


def test_invalid_bytes_do_not_stall_the_stream():
    """Lone continuation bytes never form a character: they come out as U+FFFD, text keeps flowing."""
    detokenizer = IncrementalDetokenizer(TOKENIZER, PROMPT_IDS)
    garbage = [byte_token(0x80)] * 6
    deltas = [detokenizer.add([token_id]) for token_id in garbage]
    deltas.append(detokenizer.add(TOKENIZER.encode("fine", add_bos=False)))
    text = "".join(deltas) + detokenizer.flush()
    assert text.endswith(" fine") and text.count("\ufffd") >= 1
    assert deltas[-1].endswith("fine")  # not held back behind the garbage


def test_flush_emits_an_unfinished_character():
    detokenizer = IncrementalDetokenizer(TOKENIZER, PROMPT_IDS)
    assert detokenizer.add([byte_token(0xF0), byte_token(0x9F)]) == ""
    assert "\ufffd" in detokenizer.flush()
    assert detokenizer.flush() == ""


class CountingTokenizer:
    """Wraps the default tokenizer and records how many ids each decode call saw."""

    def __init__(self) -> None:
        self.name, self.vocab_size = TOKENIZER.name, TOKENIZER.vocab_size
        self.bos_token_id, self.eos_token_id = TOKENIZER.bos_token_id, TOKENIZER.eos_token_id
        self.decode_lengths: list[int] = []

    def encode(self, text, *, add_bos=True):
        return TOKENIZER.encode(text, add_bos=add_bos)

    def decode(self, token_ids):
        self.decode_lengths.append(len(token_ids))
        return TOKENIZER.decode(token_ids)


def test_decode_window_stays_bounded_over_a_long_output():
    """O(n) overall: each decode sees a few ids, not the whole output."""
    counting = CountingTokenizer()
    output_ids = TOKENIZER.encode("naïve 世界 🦜 text " * 400, add_bos=False)
    detokenizer = IncrementalDetokenizer(counting, PROMPT_IDS)
    deltas = [detokenizer.add([token_id]) for token_id in output_ids] + [detokenizer.flush()]
    assert len(output_ids) > 3000
    assert "".join(deltas) == expected_text(output_ids)
    assert max(counting.decode_lengths) <= 12
    assert sum(counting.decode_lengths) < 20 * len(output_ids)


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_bpe_of_the_default_model_streams_whole_characters(text):
    """SmolLM2's tokenizer (byte-level BPE, tokenizers library): same invariants, any chunking."""
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    prompt_ids = tokenizer.encode("Translate:", add_bos=True)
    output_ids = tokenizer.encode(text, add_bos=False)
    expected = tokenizer.decode(prompt_ids + output_ids)[len(tokenizer.decode(prompt_ids)) :]
    rng = random.Random(11)
    for sizes in ([1] * len(output_ids), [rng.randint(1, 4) for _ in range(len(output_ids))]):
        detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
        deltas, start = [], 0
        for size in sizes:
            deltas.append(detokenizer.add(output_ids[start : start + size]))
            start += size
        deltas.append(detokenizer.flush())
        assert "".join(deltas) == expected and not any("\ufffd" in delta for delta in deltas)
