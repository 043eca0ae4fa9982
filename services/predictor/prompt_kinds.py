"""Kinds of prompt that evaluation reports separately: where a length predictor tends to be weak.

A prompt can be of several kinds at once (a long prompt that pastes code and a URL) or of none.
The kinds are decided from the prompt alone with cheap, fixed rules, so every evaluation (and the
docs' tables) splits the same rows the same way:

- CODE: the prompt contains code (a fence, or several lines that look like source code);
- URL: it contains a web address;
- TABLE_JSON: it asks for or contains a table, JSON, CSV, YAML or XML;
- MATH: it asks to calculate / solve / prove, or contains arithmetic or LaTeX;
- LONG_PROMPT: more than LONG_PROMPT_TOKENS prompt tokens;
- LATER_CHUNK: a later chunk of a split ShareGPT conversation (its start is elsewhere).
"""

from __future__ import annotations

import enum
import re

LONG_PROMPT_TOKENS = 256  # prompts above this many tokens count as long
MIN_CODE_LINES = 2  # lines that look like code before a prompt without a fence counts as code

_CODE_LINE_START = re.compile(
    r"\s*(?:def |class |import |from \S+ import |#include|public |private |function |const |let |var |"
    r"return\b|if\s*\(|for\s*\(|while\s*\(|SELECT |CREATE TABLE|<\w+[^>]{0,200}>|\w+\s*=\s*[\w\"'\[{(])"
)
_URL = re.compile(r"https?://|www\.\w", re.IGNORECASE)
_TABLE_JSON_WORDS = re.compile(r"\b(?:tables?|tabular|json|csv|yaml|xml|spreadsheet)\b", re.IGNORECASE)
_TABLE_JSON_CONTENT = re.compile(r"^\s*\|.*\|\s*$|\{\s*\"\w+\"\s*:", re.MULTILINE)
_MATH_WORDS = re.compile(
    r"\b(?:calculate|compute|solve|equation|integral|derivative|probability|prove|theorem|"
    r"arithmetic|algebra|geometry|matrix|how many|how much)\b",
    re.IGNORECASE,
)
_MATH_CONTENT = re.compile(r"\d\s*[-+*/^=]\s*\d|\\frac|\\sum|\\int|\$[^$\n]+\$")


class PromptKind(enum.StrEnum):
    """Kinds of prompt evaluated separately (a prompt has zero or more)."""

    CODE = "code"
    URL = "url"
    TABLE_JSON = "table_json"
    MATH = "math"
    LONG_PROMPT = "long_prompt"
    LATER_CHUNK = "later_chunk"


def is_code_line(line: str) -> bool:
    """A line that looks like source code: ends in ; { or }, or starts like a statement."""
    return line.rstrip().endswith((";", "{", "}")) or _CODE_LINE_START.match(line) is not None


def contains_code(prompt_text: str) -> bool:
    """A code fence, or at least MIN_CODE_LINES lines that look like source code."""
    if "```" in prompt_text:
        return True
    num_code_lines = 0
    for line in prompt_text.splitlines():
        if is_code_line(line):
            num_code_lines += 1
            if num_code_lines >= MIN_CODE_LINES:
                return True
    return False


def prompt_kinds(prompt_text: str, num_prompt_tokens: int, is_conversation_start: bool = True) -> frozenset[PromptKind]:
    """The kinds of one prompt (see the module docstring)."""
    kinds = set()
    if contains_code(prompt_text):
        kinds.add(PromptKind.CODE)
    if _URL.search(prompt_text):
        kinds.add(PromptKind.URL)
    if _TABLE_JSON_WORDS.search(prompt_text) or _TABLE_JSON_CONTENT.search(prompt_text):
        kinds.add(PromptKind.TABLE_JSON)
    if _MATH_WORDS.search(prompt_text) or _MATH_CONTENT.search(prompt_text):
        kinds.add(PromptKind.MATH)
    if num_prompt_tokens > LONG_PROMPT_TOKENS:
        kinds.add(PromptKind.LONG_PROMPT)
    if not is_conversation_start:
        kinds.add(PromptKind.LATER_CHUNK)
    return frozenset(kinds)
