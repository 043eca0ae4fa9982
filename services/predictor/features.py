"""Prompt features for output-length prediction: plain numpy, no model, no tokenizer.

The predictor sees only the prompt, so its features are what a person would look at to guess how
long the answer will be: how long the prompt is, whether it pastes code or a document, and what it
asks for (a list of N items, code, an essay of N words, a one-word answer, a translation, ...).

Invariants:
- `extract_features` is a pure function of (prompt_text, num_prompt_tokens): same input, same
  float32 vector, on every machine. Training and serving both call it, so a model is only valid
  for the `FEATURE_VERSION` it was trained with (recorded in the model's metadata.json).
- The vector has `NUM_FEATURES` entries in the order of `FEATURE_NAMES`. Appending, removing or
  changing any feature must change `FEATURE_VERSION`.
- Lexical patterns look at most at the first and last `LEXICAL_WINDOW_CHARS` characters: the request
  ("summarize this:", "...in 3 bullet points") sits at the start or the end of a pasted document, and
  the window bounds the cost of a 100k-character prompt. Character and newline counts use the
  whole text (they are C-speed).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

FEATURE_VERSION = "lex-v1"

# Characters per token used when a caller sends no token count (SentencePiece on English text).
CHARS_PER_TOKEN_ESTIMATE = 4.0
# Lexical patterns see at most this many characters from the start plus as many from the end.
LEXICAL_WINDOW_CHARS = 1000
# Numbers bigger than this in "N items" / "N words" are not counts of what to write (years, ids).
MAX_REQUESTED_COUNT = 200
MAX_REQUESTED_WORDS = 10000

# Binary "does the prompt ask for / contain X" signals, in feature order. A signal is 1.0 when one
# of its words is a word of the lexical window, or one of its phrases (2-4 words) occurs in it, both
# matched on lower-cased words (split on anything but letters, digits and #+'). Set look-ups instead
# of regexes or substring search: an IGNORECASE regex with many alternatives costs ~0.2 us per
# character and signal, which would dominate the predictor's latency on long prompts.
_KEYWORD_SIGNALS: tuple[tuple[str, frozenset[str], tuple[tuple[str, ...], ...]], ...] = tuple(
    (name, frozenset(words.split()), tuple(tuple(phrase.split()) for phrase in phrases))
    for name, words, phrases in (
        (
            "asks_list",
            "list lists bullet bullets enumerate steps ideas tips examples outline",
            ("top 3", "top 5", "top 10", "ways to", "step by step"),
        ),
        (
            "asks_code",
            "code function script implement program python javascript typescript java sql query "
            "regex html css react api class c++ golang rust bash dockerfile c# kotlin swift",
            (),
        ),
        (
            "asks_long_form",
            "essay article blog story report detailed comprehensive elaborate thorough "
            "chapter paper proposal novel speech",
            ("in detail", "in depth", "long form"),
        ),
        (
            "asks_brief",
            "brief briefly short shortly concise concisely summary summarize summarise summarization tldr",
            ("tl dr", "one sentence", "in a sentence", "few words", "one paragraph", "one line"),
        ),
        (
            "asks_one_word",
            "",
            (
                "one word",
                "single word",
                "yes or no",
                "true or false",
                "only answer",
                "just answer",
                "answer with",
                "reply with",
                "respond with",
                "only the",
                "only output",
                "only return",
                "just the",
                "just say",
                "nothing else",
            ),
        ),
        (
            "asks_translation",
            "translate translation translated translating",
            (
                "in english",
                "in french",
                "in spanish",
                "in german",
                "in chinese",
                "in japanese",
                "in korean",
                "in italian",
                "in portuguese",
                "in russian",
                "in arabic",
                "in hindi",
                "into english",
            ),
        ),
        (
            "asks_rewrite",
            "rewrite rephrase paraphrase proofread",
            (
                "re write",
                "correct the",
                "correct this",
                "correct my",
                "fix the",
                "fix this",
                "fix my",
                "improve the",
                "improve this",
                "improve my",
                "edit the",
                "edit this",
                "edit my",
            ),
        ),
        (
            "asks_explain",
            "explain describe why",
            ("what is", "what are", "how does", "how do", "how to", "tell me about"),
        ),
        (
            "asks_choice",
            "classify choose select categorize categorise sentiment rate score",
            ("which of the following", "multiple choice"),
        ),
        ("asks_math", "calculate solve compute equation probability", ("how many", "how much")),
        ("asks_email", "email letter", ("e mail", "message to", "reply to", "cover letter")),
        ("asks_table", "table csv json markdown yaml xml spreadsheet", ()),
        ("asks_plan", "plan schedule itinerary curriculum syllabus roadmap strategy agenda", ()),
        (
            "asks_role_play",
            "pretend roleplay",
            ("role play", "act as", "you are a", "you are an", "i want you to", "imagine you"),
        ),
    )
)
# Signals that look only at the first word of the prompt.
_FIRST_WORD_SIGNALS: tuple[tuple[str, frozenset[str]], ...] = (
    ("asks_continue", frozenset("continue go keep more next".split())),
    ("is_greeting", frozenset("hi hello hey thanks thank good".split())),
    (
        "starts_with_question_word",
        frozenset("what who when where which how why is are can could do does should will would".split()),
    ),
)
# Substrings that betray pasted code (matched on the raw window, case kept).
_CODE_MARKERS = ("```", ";\n", "{\n", "}\n", "\ndef ", "\nimport ", "\n#include", "\nclass ", "();", "=>")
_LEXICAL_NAMES: tuple[str, ...] = (
    tuple(name for name, _, _ in _KEYWORD_SIGNALS)
    + tuple(name for name, _ in _FIRST_WORD_SIGNALS)
    + ("contains_code", "contains_url")
)

# Nouns after a number that make it a count of things to write: "5 ideas", "10 bullet points".
_ITEM_NOUNS = frozenset(
    "ideas ways tips examples reasons steps points bullet bullets items questions names titles "
    "sentences paragraphs things options slogans taglines headlines facts lines words".split()
)
# Verbs before a number that make it a count: "top 3", "list 7", "give me 5".
_COUNT_VERBS = frozenset("top list give me write provide suggest generate name create".split())
_WORD_PATTERN = re.compile(r"[a-z0-9#+']+")
_SENTENCE_END_PATTERN = re.compile(r"[.!?](?:\s|$)")
_DIGIT_PATTERN = re.compile(r"\d")
_NON_ASCII_PATTERN = re.compile(r"[^\x00-\x7f]")

# Numeric features, then the lexical signals, in this exact order.
_NUMERIC_FEATURE_NAMES: tuple[str, ...] = (
    "log_prompt_tokens",  # log1p(prompt tokens); estimated from chars when the caller sent 0
    "log_chars",  # log1p(characters)
    "log_newlines",  # log1p(newline count)
    "log_spaces",  # log1p(space count), a cheap word count
    "chars_per_token",  # characters per token: low for code and non-Latin scripts
    "non_ascii_fraction",  # share of non-ASCII characters (language signal)
    "digit_fraction",  # share of digits (data, numbers, math)
    "log_question_marks",  # log1p(number of '?')
    "ends_with_question_mark",  # 1.0 when the stripped prompt ends in '?'
    "log_sentences",  # log1p(sentence ends in the lexical window)
    "log_requested_items",  # log1p(N) for "N ideas" / "top N" / "list N"; 0 when absent
    "log_requested_words",  # log1p(N) for "in N words"; 0 when absent
)
FEATURE_NAMES: tuple[str, ...] = _NUMERIC_FEATURE_NAMES + _LEXICAL_NAMES
NUM_FEATURES = len(FEATURE_NAMES)


def _lexical_window(prompt_text: str) -> str:
    """The start and the end of the prompt (all of it when short), joined by a newline."""
    if len(prompt_text) <= 2 * LEXICAL_WINDOW_CHARS:
        return prompt_text
    return prompt_text[:LEXICAL_WINDOW_CHARS] + "\n" + prompt_text[-LEXICAL_WINDOW_CHARS:]


def _requested_counts(words: Sequence[str]) -> tuple[int, int]:
    """(items, words) the prompt asks for: "5 ideas", "top 3" -> items; "in 300 words" -> words.

    0 when absent; numbers above MAX_REQUESTED_COUNT items or MAX_REQUESTED_WORDS words are years,
    ids or prices, not lengths, and are ignored.
    """
    num_items, num_words = 0, 0
    for index, word in enumerate(words):
        if not word.isdigit() or len(word) > 5:
            continue
        value = int(word)
        following = words[index + 1 : index + 3]
        if following and following[0] in ("words", "word") and value <= MAX_REQUESTED_WORDS:
            num_words = max(num_words, value)
        elif value > MAX_REQUESTED_COUNT or value == 0:
            continue
        elif _ITEM_NOUNS.intersection(following) or (index > 0 and words[index - 1] in _COUNT_VERBS):
            num_items = max(num_items, value)
    return num_items, num_words


def _any_phrase(
    words: Sequence[str], bigram_set: frozenset[tuple[str, str]], phrases: tuple[tuple[str, ...], ...]
) -> bool:
    """True when one of the phrases (tuples of >= 2 words) occurs in words.

    The bigram set rejects almost every phrase in O(1); only a phrase whose first two words occur
    is checked in full (a scan, rare).
    """
    for phrase in phrases:
        if phrase[:2] not in bigram_set:
            continue
        if len(phrase) == 2:
            return True
        width = len(phrase)
        if any(tuple(words[i : i + width]) == phrase for i in range(len(words) - width + 1)):
            return True
    return False


def _lexical_signals(window: str, words: Sequence[str]) -> tuple[float, ...]:
    """The `_LEXICAL_NAMES` signals (0.0 or 1.0) of the window and its lower-cased words."""
    word_set = frozenset(words)
    bigram_set = frozenset(zip(words, words[1:]))
    keyword = tuple(
        1.0 if not word_set.isdisjoint(signal_words) or _any_phrase(words, bigram_set, phrases) else 0.0
        for _, signal_words, phrases in _KEYWORD_SIGNALS
    )
    first_word = words[0] if words else ""
    first = tuple(1.0 if first_word in signal_words else 0.0 for _, signal_words in _FIRST_WORD_SIGNALS)
    contains_code = 1.0 if any(marker in window for marker in _CODE_MARKERS) else 0.0
    contains_url = 1.0 if "http://" in window or "https://" in window else 0.0
    return keyword + first + (contains_code, contains_url)


def extract_features(prompt_text: str, num_prompt_tokens: int) -> np.ndarray:
    """Feature vector (float32, shape (NUM_FEATURES,)) of one prompt; see `FEATURE_NAMES`.

    A num_prompt_tokens of 0 with a non-empty text means "not tokenized": it is estimated from the
    character count (CHARS_PER_TOKEN_ESTIMATE) so that a caller without a tokenizer still gets a
    sensible prediction.
    """
    if num_prompt_tokens < 0:
        raise ValueError(f"num_prompt_tokens must be >= 0, got {num_prompt_tokens}")
    num_chars = len(prompt_text)
    if num_prompt_tokens == 0 and num_chars > 0:
        num_prompt_tokens = max(1, math.ceil(num_chars / CHARS_PER_TOKEN_ESTIMATE))
    window = _lexical_window(prompt_text)
    words = _WORD_PATTERN.findall(window.lower())
    num_items, num_words = _requested_counts(words)
    window_len = max(len(window), 1)
    num_non_ascii = 0 if window.isascii() else len(_NON_ASCII_PATTERN.findall(window))
    numeric = (
        math.log1p(num_prompt_tokens),
        math.log1p(num_chars),
        math.log1p(prompt_text.count("\n")),
        math.log1p(prompt_text.count(" ")),
        num_chars / max(num_prompt_tokens, 1),
        num_non_ascii / window_len,
        len(_DIGIT_PATTERN.findall(window)) / window_len,
        math.log1p(prompt_text.count("?")),
        1.0 if prompt_text.rstrip().endswith("?") else 0.0,
        math.log1p(len(_SENTENCE_END_PATTERN.findall(window))),
        math.log1p(num_items),
        math.log1p(num_words),
    )
    return np.asarray(numeric + _lexical_signals(window, words), dtype=np.float32)


def extract_feature_matrix(prompts: Sequence[tuple[str, int]]) -> np.ndarray:
    """Features of many (prompt_text, num_prompt_tokens) pairs: float32, shape (len, NUM_FEATURES)."""
    matrix = np.zeros((len(prompts), NUM_FEATURES), dtype=np.float32)
    for row, (prompt_text, num_prompt_tokens) in enumerate(prompts):
        matrix[row] = extract_features(prompt_text, num_prompt_tokens)
    return matrix
