"""Incremental detokenization: token ids arrive a few at a time, text deltas go out.

Two problems make "decode the new ids alone" wrong, and "decode everything each time" too slow:

- Tokenizers are not concatenative: SentencePiece drops the leading space of the first piece it
  decodes, and a multi-byte character may be split over several byte-fallback tokens
  (<0xF0> <0x9F> <0xA6> <0x9C> = one emoji), which decode to U+FFFD until the last byte arrives.
- Decoding the whole output after every message is O(n^2) over a long generation.

So decode a sliding window with one already-emitted chunk of context before the new ids:

    ids:    ... | emitted earlier | context   | new ids         |
                                  ^ prefix    ^ read            ^ len(ids)
    prefix_text = decode(ids[prefix:read])       (already emitted)
    full_text   = decode(ids[prefix:])
    delta       = full_text[len(prefix_text):]   then prefix <- read, read <- len(ids)

Both decodes start at the same token, so whatever the tokenizer does at the start of a decode
happens to both and cancels out. While full_text ends in U+FFFD (an incomplete character) nothing
is emitted past the last complete character, so a character comes out whole once its last byte
arrives. An incomplete UTF-8 sequence is at most 3 bytes, i.e. at most 3 byte tokens: if more ids
than that are pending and the text still ends in U+FFFD however many of the last 3 are held back,
the replacement chars are real (invalid bytes the model produced) and are emitted.

The window starts with the last few prompt ids, so the first output token keeps its leading space
("Hello" + "▁world" -> " world"). Invariant (for well-formed output): the concatenated deltas equal
decode(prompt_tail + output)[len(decode(prompt_tail)):], where prompt_tail is those context ids.
"""

from __future__ import annotations

from typing import Sequence

from services.common.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
NUM_PROMPT_CONTEXT_IDS = 5  # prompt ids decoded as context before the first output id
MAX_INCOMPLETE_IDS = 3  # an incomplete UTF-8 character spans at most 3 byte tokens


class IncrementalDetokenizer:
    """Turns a stream of output token ids into text deltas; cost per call is O(window), not O(n)."""

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        context = list(prompt_token_ids[-NUM_PROMPT_CONTEXT_IDS:])
        self._ids: list[int] = context  # context ids followed by every output id so far
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = len(context)  # ids before this are already emitted as text

    def add(self, token_ids: Sequence[int]) -> str:
        """Appends new ids; returns the text they complete (possibly "" while a character is partial)."""
        if not token_ids:
            return ""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        full_text = self._decode(self._prefix_offset, len(self._ids))
        if not full_text.endswith(REPLACEMENT_CHAR):
            return self._advance(prefix_text, full_text, len(self._ids))
        return self._emit_before_incomplete_tail(prefix_text)

    def _emit_before_incomplete_tail(self, prefix_text: str) -> str:
        """The text ends in U+FFFD: emit what precedes the (at most 3) ids of a partial character.

        Tries holding back 1, 2, then 3 ids; the first cut whose text ends cleanly is emitted. If
        none does while more than 3 ids are pending, the U+FFFD before the last 3 ids is final
        (invalid bytes), so it is emitted rather than stalling the window forever.
        """
        num_pending = len(self._ids) - self._read_offset
        for num_held in range(1, min(MAX_INCOMPLETE_IDS, num_pending - 1) + 1):
            cut = len(self._ids) - num_held
            text = self._decode(self._prefix_offset, cut)
            if not text.endswith(REPLACEMENT_CHAR):
                return self._advance(prefix_text, text, cut)
        if num_pending > MAX_INCOMPLETE_IDS:
            cut = len(self._ids) - MAX_INCOMPLETE_IDS
            return self._advance(prefix_text, self._decode(self._prefix_offset, cut), cut)
        return ""

    def flush(self) -> str:
        """Emits whatever is still held back (an incomplete character becomes U+FFFD); call at the end."""
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        full_text = self._decode(self._prefix_offset, len(self._ids))
        return self._advance(prefix_text, full_text, len(self._ids))

    def _advance(self, prefix_text: str, full_text: str, new_read_offset: int) -> str:
        """Emits full_text past prefix_text and slides the window so it starts at the old read offset."""
        if len(full_text) <= len(prefix_text):
            # Nothing visible yet (a control token, or a tokenizer that rewrites text across the
            # boundary): mark the ids read but keep the window's start, so its context stays.
            if full_text == prefix_text:
                self._read_offset = new_read_offset
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = new_read_offset
        return full_text[len(prefix_text) :]

    def _decode(self, start: int, stop: int) -> str:
        return self._tokenizer.decode(self._ids[start:stop]) if stop > start else ""
