"""Configs: TOML files validated into frozen, typed dataclasses.

A file names what it describes with a top-level `kind`: "io" (an AMI campaign of Io and
calibrators, `CampaignConfig`), "flatfield" (a dithered star field for pixel
calibration, `FlatFieldConfig`), "fit" (`FitConfig`), "flatfield_fit" (a fit of such a
field, `StarFieldFitConfig`) or "sweep" (`SweepConfig`). Every key but a sweep's `fit` has
a default, so a file holding only `kind` is valid. An unknown key, a wrong type or an
invalid value is a `ConfigError` (a ValueError) naming the file, the dotted key and what
was expected.
"""

import dataclasses
import os
import tomllib
import typing
from typing import Any

from scaling.config.checks import ConfigError, mismatch
from scaling.config.fitting import FitConfig, StarFieldFitConfig
from scaling.config.simulation import CampaignConfig, FlatFieldConfig
from scaling.config.sweep import SweepConfig

Config = CampaignConfig | FlatFieldConfig | FitConfig | SweepConfig
KINDS: dict[str, type[Config]] = {
    c.KIND: c for c in (CampaignConfig, FlatFieldConfig, FitConfig, StarFieldFitConfig, SweepConfig)
}

# --- loading ---------------------------------------------------------------------------


_NAMES = {
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    bool: ("true or false", "booleans"),
}


def _describe(tp, plural: bool = False) -> str:
    """What a value of type `tp` looks like in TOML, e.g. 'a list of 2 numbers'."""
    if dataclasses.is_dataclass(tp):
        return "tables" if plural else "a table"
    if typing.get_origin(tp) is dict:
        values = _describe(typing.get_args(tp)[1], plural=True)
        return f"tables of {values}" if plural else f"a table of {values}"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        variadic = len(args) == 2 and args[1] is Ellipsis
        items = _describe(args[0], plural=True)
        what = f"of {items}" if variadic else f"of {len(args)} {items}"
        return f"lists {what}" if plural else f"a list {what}"
    return _NAMES[tp][plural]


def _convert(value: Any, tp, key: str) -> Any:
    """`value` from TOML as type `tp`; ConfigError(key, …) if it is not one."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, mismatch(_describe(tp), value))
        item = typing.get_args(tp)[1]
        return {name: _convert(v, item, f"{key}.{name}") for name, v in value.items()}
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        if not isinstance(value, list) or (fixed and len(value) != len(args)):
            raise ConfigError(key, mismatch(_describe(tp), value))
        kinds = args if fixed else [args[0]] * len(value)
        return tuple(
            _convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, kinds, strict=True))
        )
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise ConfigError(key, mismatch(_describe(tp), value))
    return float(value) if tp is float else value


def _build(cls: type, table: Any, prefix: str):
    """Instance of dataclass `cls` from a TOML table; keys are reported under `prefix`."""
    dotted = lambda name: f"{prefix}.{name}" if prefix else name  # noqa: E731
    if not isinstance(table, dict):
        raise ConfigError(prefix or "top level", mismatch("a table", table))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in table:
        if name not in fields:
            raise ConfigError(dotted(name), f"unknown key; expected one of {', '.join(fields)}")
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in table:
            raise ConfigError(dotted(name), f"missing; expected {_describe(hints[name])}")
    values = {name: _convert(v, hints[name], dotted(name)) for name, v in table.items()}
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(dotted(err.key), err.problem) from None


def parse_config(table: dict[str, Any], file: str = "<config>") -> Config:
    """Config from an already parsed TOML table; errors name `file`."""
    table = dict(table)
    kind = table.pop("kind", CampaignConfig.KIND)
    try:
        if kind not in KINDS:
            raise ConfigError("kind", mismatch(f"one of {sorted(KINDS)}", kind))
        return _build(KINDS[kind], table, "")
    except ConfigError as err:
        raise ConfigError(err.key, err.problem, file) from None


def load_config(path: str | os.PathLike) -> Config:
    """Load and validate a TOML config (see the module docstring).

    Raises:
        OSError: the file cannot be read.
        ConfigError: a key is unknown, mistyped or invalid (a ValueError).
    """
    with open(path, "rb") as f:
        try:
            table = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{os.fspath(path)}: invalid TOML: {err}") from None
    return parse_config(table, os.fspath(path))


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively: the form TOML and JSON give back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as TOML/JSON-like data with its `kind` (`parse_config` reads it back)."""
    return {"kind": config.KIND, **_plain(dataclasses.asdict(config))}


def override(config: Config, values: dict[str, Any], file: str = "<config>") -> Config:
    """`config` with each dotted key of `values` set (e.g. "optimisers.log_image.lr"),
    validated again; a whole number given for an integer key becomes an integer.

    Raises:
        ConfigError: a key names no table of `config`, or a value is invalid there.
    """
    table = config_to_dict(config)
    for key, value in values.items():
        *parents, last = key.split(".")
        node = table
        for i, name in enumerate(parents):
            if not isinstance(node.get(name), dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(key, f"{where} is no table of a {config.KIND} config", file)
            node = node[name]
        if isinstance(node.get(last), int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        node[last] = value
    return parse_config(table, file)
