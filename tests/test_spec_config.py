"""SpeculativeConfig: --num-speculative-tokens 0 resolves to each method's own k; bad values are ValueErrors."""

from __future__ import annotations

import pytest

from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.spec_config import (
    DEFAULT_NUM_SPECULATIVE_TOKENS,
    MAX_NUM_SPECULATIVE_TOKENS,
    METHOD_NUM_SPECULATIVE_TOKENS,
    SpeculativeConfig,
)


def test_the_default_k_is_each_methods_own():
    assert DEFAULT_NUM_SPECULATIVE_TOKENS == 0
    assert SpeculativeConfig(SpeculativeMethod.NGRAM).num_speculative_tokens == 16
    assert SpeculativeConfig(SpeculativeMethod.EARLY_EXIT).num_speculative_tokens == 4
    for method in SpeculativeMethod:
        assert 1 <= METHOD_NUM_SPECULATIVE_TOKENS[method] <= MAX_NUM_SPECULATIVE_TOKENS
    assert SpeculativeConfig(SpeculativeMethod.NGRAM, 3).num_speculative_tokens == 3  # given: kept


@pytest.mark.parametrize("k", [-1, MAX_NUM_SPECULATIVE_TOKENS + 1])
def test_a_k_out_of_range_is_a_value_error(k):
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpeculativeConfig(SpeculativeMethod.NGRAM, k)
