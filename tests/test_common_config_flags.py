"""config_flags: argparse flags generated from a frozen config dataclass (one source of defaults)."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import pathlib

import pytest

from services.common.config_flags import add_config_flags, config_values, setting
from services.engine.config import EngineConfig
from services.gateway.config import GatewayConfig
from services.memory.config import MemoryConfig
from services.predictor.config import PredictorConfig


class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Example:
    address: str = setting(help="where to connect (required)")
    num_items: int = setting(3, "how many")
    rate_bytes_per_s: float = setting(2e9, "rate, GB/s (100% = full)", flag="--rate-gb-per-s", scale=1e9)
    color: Color = setting(Color.BLUE, "which color")
    cache_dir: pathlib.Path | None = setting(None, "a directory")
    limit: int | None = setting(None, "optional cap")
    verbose: bool = setting(False, "talk more")
    use_gpu: bool = setting(True, "never use the GPU", flag="--cpu-only", negate=True)
    keys: tuple[str, ...] = setting((), "a key (repeatable)", flag="--key", metavar="KEY")
    internal: int = setting(7, "not a flag", cli=False)
    plain: int = 5  # no metadata: no flag


def _parse(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example)
    return config_values(Example, parser.parse_args(argv))


def test_defaults_come_from_the_dataclass():
    values = _parse(["--address", "h:1"])
    assert Example(**values) == Example(address="h:1")
    assert set(values) == {
        "address",
        "num_items",
        "rate_bytes_per_s",
        "color",
        "cache_dir",
        "limit",
        "verbose",
        "use_gpu",
        "keys",
    }


def test_types_scale_negation_and_repeats():
    values = _parse(
        [
            "--address",
            "h:1",
            "--num-items",
            "9",
            "--rate-gb-per-s",
            "0.5",
            "--color",
            "red",
            "--cache-dir",
            "/tmp/x",
            "--limit",
            "4",
            "--verbose",
            "--cpu-only",
            "--key",
            "a",
            "--key",
            "b",
        ]
    )
    assert values == {
        "address": "h:1",
        "num_items": 9,
        "rate_bytes_per_s": 0.5e9,
        "color": "red",
        "cache_dir": pathlib.Path("/tmp/x"),
        "limit": 4,
        "verbose": True,
        "use_gpu": False,
        "keys": ("a", "b"),
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --address"),
        (["--address", "h", "--num-items", "x"], "argument --num-items: invalid int value: 'x'"),
        (["--address", "h", "--color", "green"], "argument --color: invalid choice: 'green'"),
        (["--address", "h", "--internal", "1"], "unrecognized arguments: --internal 1"),
    ],
)
def test_bad_flags_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit):
        _parse(argv)
    assert message in capsys.readouterr().err


def test_help_shows_the_field_docs(capsys):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example)
    text = parser.format_help()
    assert "rate, GB/s (100% = full)" in text and "never use the GPU" in text and "{red,blue}" in text


def test_a_field_without_a_flag_form_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Bad:
        pairs: dict = setting(None, "no flag form")

    with pytest.raises(TypeError, match="pairs"):
        add_config_flags(argparse.ArgumentParser(), Bad)


@pytest.mark.parametrize(
    ("config_cls", "argv"),
    [
        (MemoryConfig, []),
        (PredictorConfig, []),
        (GatewayConfig, ["--engine-address", "e:1"]),
        (EngineConfig, []),
    ],
)
def test_each_service_parses_to_its_dataclass_defaults(config_cls, argv):
    """With no flags, from_args equals the dataclass's own defaults (the one source), except for the
    fields whose flags mean something else when absent (metrics port: served on the default port;
    engine id: hostname-random)."""
    parsed = config_cls.from_args(argv)
    skip = {"metrics_port", "engine_id"}
    required = {
        f.name: getattr(parsed, f.name)
        for f in dataclasses.fields(config_cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    default = config_cls(**required)
    for field in dataclasses.fields(config_cls):
        if field.name not in skip:
            assert getattr(parsed, field.name) == getattr(default, field.name), field.name
