"""Command-line flags generated from a service's frozen config dataclass: defaults live in one place.

A field declared with `setting(default, "help text")` becomes `--field-name` with the field's
default, a type from its annotation and the help text; `config_values(Config, args)` reads the
parsed flags back as the dataclass's keyword arguments. The dataclass stays the only place where
a default is written (the flag's default and the dataclass's are the same object), and its
__post_init__ stays the only validation.

    annotation          flag
    int, float, str     --name VALUE (type int / float / str)
    pathlib.Path        --name PATH (type Path)
    X | None            as X, default None
    StrEnum subclass    --name {a,b,c} (choices = the values; __post_init__ converts to the member)
    bool                --name (store_true; the default must be False), or with negate=True a
                        flag that sets the field False (allow_cuda <- --cpu-only)
    tuple[str, ...]     --name VALUE, repeatable (append), read back as a tuple

Why metadata (`field(metadata={"help": ...})`, written through `setting`) and not the fields'
trailing comments: metadata is there at run time in every install (comments need the source
file, which a zipped or compiled install may not ship), a formatter that wraps or moves a comment
cannot silently change a flag's help, and a field without help is an error found at startup.
Fields with `cli=False` (or without metadata) get no generated flag: their flags have their own
helpers (TLS, metrics port) or their own parsing.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import pathlib
import types
import typing
from typing import Any, Callable

HELP = "help"  # metadata key of a field's help text; a field without it gets no flag
_FLAG_KEYS = ("flag", "scale", "negate", "metavar", "type")


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",  # the argparse name, on purpose
    *,
    flag: str | None = None,
    scale: float | None = None,
    negate: bool = False,
    metavar: str | None = None,
    type: Callable[[str], Any] | None = None,  # the argparse name
    cli: bool = True,
) -> Any:
    """A dataclass field with its default and the metadata its flag is generated from.

    flag: the option string when it is not `--` + the field name with dashes (kept for flags
    that predate their field's name); scale: the flag is in other units, field = flag * scale
    (`--assumed-transfer-gb-per-s` for a bytes-per-second field: scale 1e9); negate: a bool
    field set False by a store_true flag; type: an argparse converter instead of the
    annotation's; cli=False: no generated flag (the help still documents the field).
    """
    metadata: dict[str, Any] = {HELP: help, "cli": cli}
    for key, value in (("flag", flag), ("scale", scale), ("metavar", metavar), ("type", type)):
        if value is not None:
            metadata[key] = value
    if negate:
        metadata["negate"] = True
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_fields(config_cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of config_cls that get a generated flag, in declaration order."""
    return [f for f in dataclasses.fields(config_cls) if HELP in f.metadata and f.metadata.get("cli", True)]


def option_string(field: dataclasses.Field[Any]) -> str:
    """`--field-name`, or the field's `flag` override."""
    return str(field.metadata.get("flag") or "--" + field.name.replace("_", "-"))


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_cls: type) -> None:
    """Adds one flag per flag field of config_cls (dest = the field name); TypeError names a field
    whose annotation has no flag form."""
    hints = typing.get_type_hints(config_cls)
    for field in flag_fields(config_cls):
        parser.add_argument(option_string(field), dest=field.name, **_argument_options(field, hints[field.name]))


def config_values(config_cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags of config_cls's flag fields as its constructor's keyword arguments."""
    values: dict[str, Any] = {}
    for field in flag_fields(config_cls):
        value = getattr(args, field.name)
        if field.metadata.get("negate"):
            value = not value
        elif field.metadata.get("scale") is not None and value is not None:
            value = value * field.metadata["scale"]
        elif isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return values


def _argument_options(field: dataclasses.Field[Any], annotation: Any) -> dict[str, Any]:
    """add_argument's keyword arguments for one field."""
    help_text = str(field.metadata[HELP]).replace("%", "%%")
    if not help_text:
        raise TypeError(f"field {field.name} has an empty help text")
    options: dict[str, Any] = {"help": help_text}
    if field.default is dataclasses.MISSING:
        options["required"] = True
    else:
        options["default"] = field.default
    kind = _unwrap_optional(annotation)
    if kind is bool:
        return _bool_options(field, options)
    if field.metadata.get("metavar"):
        options["metavar"] = field.metadata["metavar"]
    if typing.get_origin(kind) is tuple:
        options.update(action="append", default=list(options.get("default", ())))
        return options
    scale = field.metadata.get("scale")
    if scale is not None and options.get("default") is not None:
        options["default"] = options["default"] / scale
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        options.update(choices=[member.value for member in kind], type=str)
        if isinstance(options.get("default"), enum.Enum):
            options["default"] = options["default"].value
        return options
    converter = field.metadata.get("type") or _converter(field.name, kind)
    if converter is not str:
        options["type"] = converter
    return options


def _bool_options(field: dataclasses.Field[Any], options: dict[str, Any]) -> dict[str, Any]:
    negate = bool(field.metadata.get("negate"))
    if options.get("default") is not (True if negate else False):
        raise TypeError(f"bool field {field.name} must default to {negate} to have a store_true flag")
    options.update(action="store_true", default=False)
    return options


def _unwrap_optional(annotation: Any) -> Any:
    """X for `X | None` (and Optional[X]); the annotation itself otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _converter(name: str, kind: Any) -> Callable[[str], Any]:
    if kind in (int, float, str) or kind is pathlib.Path:
        return typing.cast(Callable[[str], Any], kind)
    raise TypeError(f"field {name}: no flag form for {kind!r}; declare it with cli=False or type=")
