"""StopStringMatcher: matches across deltas, holds back only a possible partial match."""

from __future__ import annotations

import random

import pytest

from services.gateway.stop_strings import StopStringMatcher


def feed_all(matcher: StopStringMatcher, deltas: list[str]) -> tuple[str, bool]:
    released = []
    for delta in deltas:
        scan = matcher.feed(delta)
        released.append(scan.text)
        if scan.matched:
            return "".join(released), True
    return "".join(released) + matcher.flush(), False


def test_match_straddling_deltas_truncates_before_the_stop_string():
    matcher = StopStringMatcher(["END"])
    assert feed_all(matcher, ["the answer E", "N", "D and more"]) == ("the answer ", True)


def test_only_a_possible_prefix_is_held_back():
    matcher = StopStringMatcher(["END"])
    first = matcher.feed("abc E")
    assert (first.text, matcher.held_text) == ("abc ", "E")
    second = matcher.feed("x")  # "Ex" cannot start "END": everything is released
    assert (second.text, second.matched, matcher.held_text) == ("Ex", False, "")


def test_no_stop_strings_releases_everything():
    matcher = StopStringMatcher([])
    assert matcher.feed("abc").text == "abc" and matcher.held_text == ""


def test_the_stop_string_that_ends_first_wins_whatever_the_split():
    for deltas in (["hel", "lo world"], ["hello w", "orld"], ["hello world"]):
        assert feed_all(StopStringMatcher(["o world", "lo w"]), deltas) == ("hel", True)
        assert feed_all(StopStringMatcher(["hello world", "o w"]), deltas) == ("hell", True)


def test_self_overlapping_stop_string():
    matcher = StopStringMatcher(["abcabd"])
    assert feed_all(matcher, ["xxabcab", "cabd!"]) == ("xxabc", True)


def test_held_tail_is_released_when_the_stream_ends():
    matcher = StopStringMatcher(["</end>"])
    assert feed_all(matcher, ["done </e"]) == ("done </e", False)


def test_empty_stop_string_is_refused():
    with pytest.raises(ValueError):
        StopStringMatcher(["ok", ""])


@pytest.mark.parametrize("seed", range(5))
def test_random_splits_agree_with_a_plain_search(seed):
    rng = random.Random(seed)
    alphabet = "ab\n世"
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(3)]
    text = "".join(rng.choice(alphabet) for _ in range(200))
    cuts = sorted(rng.sample(range(1, len(text)), 30))
    deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    matches = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]  # (end, start)
    expected = (text[: min(matches)[1]], True) if matches else (text, False)
    assert feed_all(StopStringMatcher(stops), deltas) == expected
