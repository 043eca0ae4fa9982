"""What a prompt contains, as tree columns: code, web addresses, tables / JSON, a pasted document.

The lexical features (features.py) say mostly what a prompt *asks* for. Held-out ShareGPT prompts
that contain code, URLs or tables rank worst (docs/benchmarks/predictor: tau 0.17-0.33 against 0.44
overall), and a pasted document changes what the length depends on (the request around it, not the
document). These columns describe the content, for models trained with them (an input layout
with `content_features`, model_inputs.py; older models keep their columns).

Invariants: a pure function of the text; numbers of lines are counted in the lexical window
(features.LEXICAL_WINDOW_CHARS from each end) so a 100k-character prompt costs what a 2k one does;
paragraph lengths use str.split (C speed) on the whole text.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from services.predictor.features import LEXICAL_WINDOW_CHARS
from services.predictor.prompt_kinds import is_code_line

CONTENT_FEATURE_VERSION = "content-v1"
CONTENT_FEATURE_NAMES: tuple[str, ...] = (
    "log_code_lines",  # log1p(lines that look like source code, in the window)
    "has_code_fence",  # 1.0 with a ``` fence anywhere
    "log_urls",  # log1p(number of http:// and https:// addresses)
    "contains_table",  # 1.0 with markdown table rows (| a | b |) or tab-separated rows in the window
    "contains_json",  # 1.0 with a JSON object or array of objects in the window
    "log_longest_paragraph_chars",  # log1p(characters of the longest blank-line-separated block)
    "pasted_share",  # longest block's share of all characters: ~1 for a pasted document
    "log_request_chars",  # log1p(characters outside the longest block): the request around a paste
)
NUM_CONTENT_FEATURES = len(CONTENT_FEATURE_NAMES)

_TABLE_ROW = re.compile(r"^\s*\|[^\n]*\|\s*$|^[^\t\n]+\t[^\t\n]+\t", re.MULTILINE)
_JSON = re.compile(r"[\[{]\s*\"[^\"\n]{1,80}\"\s*:")


def _window(text: str) -> str:
    if len(text) <= 2 * LEXICAL_WINDOW_CHARS:
        return text
    return text[:LEXICAL_WINDOW_CHARS] + "\n" + text[-LEXICAL_WINDOW_CHARS:]


def content_features(prompt_text: str) -> np.ndarray:
    """float32 [NUM_CONTENT_FEATURES] in the order of CONTENT_FEATURE_NAMES."""
    window = _window(prompt_text)
    num_code_lines = sum(1 for line in window.splitlines() if is_code_line(line))
    longest = max((len(block) for block in prompt_text.split("\n\n")), default=0)
    num_chars = max(len(prompt_text), 1)
    values = (
        math.log1p(num_code_lines),
        1.0 if "```" in prompt_text else 0.0,
        math.log1p(prompt_text.count("http://") + prompt_text.count("https://")),
        1.0 if _TABLE_ROW.search(window) else 0.0,
        1.0 if _JSON.search(window) else 0.0,
        math.log1p(longest),
        longest / num_chars,
        math.log1p(len(prompt_text) - longest),
    )
    return np.asarray(values, dtype=np.float32)


def content_feature_matrix(texts: Sequence[str]) -> np.ndarray:
    """float32 [len(texts), NUM_CONTENT_FEATURES]."""
    matrix = np.zeros((len(texts), NUM_CONTENT_FEATURES), dtype=np.float32)
    for row, text in enumerate(texts):
        matrix[row] = content_features(text)
    return matrix
