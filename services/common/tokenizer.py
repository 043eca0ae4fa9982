"""Tokenizers the gateway (text <-> ids) and the predictor (prompt token counts) load by name.

A catalog model name (e.g. "smollm2-135m-instruct") loads the tokenizer.json of its converted
directory, with its chat template, through the `tokenizers` library. A directory holding a
tokenizer.json loads the same way. "default" is Mistral 7B v0.1's SentencePiece model (32,000
tokens, BOS 1, EOS 2, Apache-2.0), shipped inside the registry package `mistral-common`; it pairs
with the random-weight test model dummy-llama-tiny. A path to a `.model` file loads that
SentencePiece model.
"""

from __future__ import annotations

import importlib.resources
import json
import pathlib
from typing import Any, Protocol, Sequence

from services.common.chat_template import ChatTemplateError, ChatTurn, render_chat
from services.common.model_catalog import CATALOG
from services.common.model_manifest import is_tokenizer_file, verify_model_dir

DEFAULT_TOKENIZER = "default"


class Tokenizer(Protocol):
    """What alise needs of a tokenizer."""

    name: str  # what load_tokenizer was given
    vocab_size: int  # valid ids are [0, vocab_size)
    bos_token_id: int | None  # prepended by encode(add_bos=True) when not None
    eos_token_id: int | None  # ends generation unless ignore_eos
    chat_template: str | None  # Jinja chat template; None = chat messages are not accepted

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def encode_chat(self, turns: Sequence[ChatTurn]) -> list[int]:
        """The prompt ids of a conversation, ending with the assistant's turn opened.

        Raises ChatTemplateError when there is no template or it rejects the conversation."""
        ...


class SentencePieceTokenizer:
    """A SentencePiece `.model` file."""

    def __init__(self, model_path: pathlib.Path, name: str) -> None:
        import sentencepiece

        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        self.name = name
        self.vocab_size = self._processor.get_piece_size()
        self.bos_token_id = _non_negative_or_none(self._processor.bos_id())
        self.eos_token_id = _non_negative_or_none(self._processor.eos_id())
        self.chat_template: str | None = None  # a bare SentencePiece model carries none

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = self._processor.encode(text)
        if add_bos and self.bos_token_id is not None:
            return [self.bos_token_id, *ids]
        return list(ids)

    def decode(self, token_ids: list[int]) -> str:
        return str(self._processor.decode(list(token_ids)))

    def encode_chat(self, turns: Sequence[ChatTurn]) -> list[int]:
        raise ChatTemplateError(f"tokenizer {self.name!r} has no chat template")


class HuggingFaceTokenizer:
    """A Hugging Face `tokenizer.json` run by the `tokenizers` library (no transformers, no torch).

    Special tokens are added as the tokenizer's own post-processor says (a Llama-2 tokenizer adds
    BOS, SmolLM2's adds nothing), exactly as `transformers` encodes with add_special_tokens=True.
    """

    def __init__(self, directory: pathlib.Path, name: str) -> None:
        from tokenizers import Tokenizer as FastTokenizer

        self._tokenizer = FastTokenizer.from_file(str(directory / "tokenizer.json"))
        config = _read_json(directory / "tokenizer_config.json")
        self.name = name
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self._bos_token = _token_text(config.get("bos_token"))
        self._eos_token = _token_text(config.get("eos_token"))
        self.bos_token_id = self._tokenizer.token_to_id(self._bos_token) if self._bos_token else None
        self.eos_token_id = self._tokenizer.token_to_id(self._eos_token) if self._eos_token else None
        self.chat_template = _chat_template(directory, config)

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_bos).ids

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def encode_chat(self, turns: Sequence[ChatTurn]) -> list[int]:
        if self.chat_template is None:
            raise ChatTemplateError(f"tokenizer {self.name!r} has no chat template")
        text = render_chat(self.chat_template, turns, bos_token=self._bos_token, eos_token=self._eos_token)
        return self._tokenizer.encode(text, add_special_tokens=False).ids


def default_tokenizer_path() -> pathlib.Path:
    """Location of Mistral 7B v0.1's tokenizer inside the installed mistral-common package."""
    return pathlib.Path(str(importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"))


def load_tokenizer(spec: str) -> Tokenizer:
    """Loads "default", a SentencePiece .model path, a catalog model's tokenizer, or a Hugging Face dir.

    A catalog model's tokenizer files are checked against its manifest first (ModelFilesError
    names a missing or corrupt file and the install command).
    """
    if spec == DEFAULT_TOKENIZER:
        return SentencePieceTokenizer(default_tokenizer_path(), DEFAULT_TOKENIZER)
    if spec.endswith(".model") and pathlib.Path(spec).is_file():
        return SentencePieceTokenizer(pathlib.Path(spec), spec)
    if spec in CATALOG:
        directory = CATALOG[spec].install_dir()
        fix = f"run scripts/install.sh (converts {spec} into {directory})"
        verify_model_dir(directory, fix, include=is_tokenizer_file)
        return HuggingFaceTokenizer(directory, spec)
    directory = pathlib.Path(spec).expanduser()
    if (directory / "tokenizer.json").is_file():
        return HuggingFaceTokenizer(directory, spec)
    raise ValueError(
        f"unknown tokenizer {spec!r}: use {DEFAULT_TOKENIZER!r}, a SentencePiece .model file, "
        f"a catalog model ({sorted(CATALOG)}) or a directory holding tokenizer.json"
    )


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _token_text(token: object) -> str:
    """tokenizer_config.json names special tokens as strings or as {"content": ...} objects."""
    if isinstance(token, dict):
        return str(token.get("content", ""))
    return token if isinstance(token, str) else ""


def _chat_template(directory: pathlib.Path, config: dict[str, Any]) -> str | None:
    """chat_template.jinja (transformers >= 4.47 saves it there), else tokenizer_config.json's entry."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _non_negative_or_none(token_id: int) -> int | None:
    return token_id if token_id >= 0 else None
