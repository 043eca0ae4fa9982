"""Tokenizers the gateway (text <-> ids) and the predictor (prompt token counts) load by name.

"default" is Mistral 7B v0.1's SentencePiece model (32,000 tokens, BOS 1, EOS 2, Apache-2.0),
shipped inside the registry package `mistral-common`, so it works offline on a fresh install and
pairs with the engine's default random-weight Llama. A path to a `.model` file loads that
SentencePiece model; anything else is handed to Hugging Face `AutoTokenizer` (local directory, or a
hub id where the hub is reachable).
"""

from __future__ import annotations

import importlib.resources
import pathlib
from typing import Protocol

DEFAULT_TOKENIZER = "default"


class Tokenizer(Protocol):
    """What alise needs of a tokenizer."""

    name: str  # what load_tokenizer was given
    vocab_size: int  # valid ids are [0, vocab_size)
    bos_token_id: int | None  # prepended by encode(add_bos=True) when not None
    eos_token_id: int | None  # ends generation unless ignore_eos

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


class SentencePieceTokenizer:
    """A SentencePiece `.model` file."""

    def __init__(self, model_path: pathlib.Path, name: str) -> None:
        import sentencepiece

        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        self.name = name
        self.vocab_size = self._processor.get_piece_size()
        self.bos_token_id = _non_negative_or_none(self._processor.bos_id())
        self.eos_token_id = _non_negative_or_none(self._processor.eos_id())

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = self._processor.encode(text)
        if add_bos and self.bos_token_id is not None:
            return [self.bos_token_id, *ids]
        return list(ids)

    def decode(self, token_ids: list[int]) -> str:
        return self._processor.decode(list(token_ids))


class HuggingFaceTokenizer:
    """Any tokenizer `transformers.AutoTokenizer` can load."""

    def __init__(self, name_or_path: str) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.name = name_or_path
        self.vocab_size = len(self._tokenizer)
        self.bos_token_id = self._tokenizer.bos_token_id
        self.eos_token_id = self._tokenizer.eos_token_id

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        if add_bos and self.bos_token_id is not None:
            return [self.bos_token_id, *ids]
        return list(ids)

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=True)


def default_tokenizer_path() -> pathlib.Path:
    """Location of Mistral 7B v0.1's tokenizer inside the installed mistral-common package."""
    return pathlib.Path(str(importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"))


def load_tokenizer(spec: str) -> Tokenizer:
    """Loads "default", a SentencePiece .model path, or a Hugging Face tokenizer name/dir."""
    if spec == DEFAULT_TOKENIZER:
        return SentencePieceTokenizer(default_tokenizer_path(), DEFAULT_TOKENIZER)
    if spec.endswith(".model") and pathlib.Path(spec).is_file():
        return SentencePieceTokenizer(pathlib.Path(spec), spec)
    return HuggingFaceTokenizer(spec)


def _non_negative_or_none(token_id: int) -> int | None:
    return token_id if token_id >= 0 else None
