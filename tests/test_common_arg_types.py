"""comma_list: the one parser of comma-separated flag values (--policies, --rates, --seeds, ...)."""

import argparse

import pytest

from services.common import arg_types
from services.common.arg_types import comma_list


def test_items_are_converted_in_order_with_empty_items_and_spaces_dropped():
    assert comma_list("fcfs,alise,srpt-oracle", str) == ("fcfs", "alise", "srpt-oracle")
    assert comma_list(" fcfs , alise,,", str) == ("fcfs", "alise")
    assert comma_list("0.8,0.9,1", float) == (0.8, 0.9, 1.0)
    assert comma_list("3,1,2", int) == (3, 1, 2)
    assert comma_list("", float) == () and comma_list(" , ", str) == ()


@pytest.mark.parametrize("text", ["1,2.5,10", "0.8,0.9,0.95,1", ",4,", "7", "1, 2"])
def test_numbers_parse_as_the_per_command_expressions_it_replaced(text):
    assert comma_list(text, float) == tuple(float(x) for x in text.split(",") if x)


@pytest.mark.parametrize("text", ["fcfs,alise", "a,,b,", "alise"])
def test_names_without_spaces_parse_as_before(text):
    assert comma_list(text, str) == tuple(name for name in text.split(",") if name)


def test_a_bad_item_raises_the_converters_own_error():
    with pytest.raises(ValueError, match="could not convert string to float: 'x'"):
        comma_list("1,x", float)
    with pytest.raises(argparse.ArgumentTypeError, match="must be > 0, got 0"):
        comma_list("4,0", arg_types.positive_int)
