"""The one way every lensgen config is read: YAML into typed dataclasses, checked before any work starts.

Every command with settings (`train`, `train-vae`, `data curate`, `data caption`) takes `--config FILE`
and any number of `--set SECTION.FIELD=VALUE` (the value is YAML: `--set optim.lr=1e-4`,
`--set data.bases=[32,48]`). `load_config(Cls, path, overrides)` reads the file, applies the overrides,
builds the dataclass tree with every value checked against its annotation (`from_mapping`), then runs
the config's own `checks()` (`validate`). A typo or a wrong value fails at load time naming the file
and the field (`c.yaml.optim.lr: expected a number, got 'fast'`), never an hour into a cluster job.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from lensgen.errors import UserError

T = TypeVar("T")
# An override: "section.field=yaml value" as typed after --set, or (dotted key, value) from code
Override = str | tuple[str, Any]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty file: {})."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping at the top level")
    return data


def coerce(tp: Any, value: Any, where: str) -> Any:
    """`value` checked against annotation `tp` (ints become floats where a float is wanted)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(option, value, where)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: got {value!r}, expected one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = args or (Any,)
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping (None: all defaults), refusing unknown fields and wrong types."""
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(names)}")
    kwargs = {name: coerce(hints[name], data[name], f"{where}.{name}") for name in names if name in data}
    try:
        return cls(**kwargs)
    except UserError as err:  # a Validated config's checks: name the file instead of "config"
        raise UserError(f"{where}: {str(err).removeprefix('config: ')}") from None


class Validated:
    """A config root whose cross-field rules live in `checks()`; it is validated whenever it is built."""

    def checks(self) -> list[tuple[bool, str, str]]:
        """(holds, field, what was expected) for every rule beyond the field types."""
        return []

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "config") -> None:
        problems = [f"{name}: expected {expected}" for ok, name, expected in self.checks() if not ok]
        if problems:
            raise UserError(f"{where}: " + "; ".join(problems))


def apply_override(data: dict, override: Override) -> None:
    """Set one dotted field in the parsed YAML (sections that are missing or empty are created)."""
    if isinstance(override, str):
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise UserError(f"--set {override!r}: expected SECTION.FIELD=VALUE, e.g. optim.lr=1e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"--set {override!r}: the value is not valid YAML ({err})") from None
    else:
        key, value = override
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part} is not a section")
    node[leaf] = value


def section_overrides(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """{"run": {"workers": 2}, "model": "m"} -> [("run.workers", 2), ("model", "m")]: the overrides a
    nested mapping stands for (a section's fields are set one by one, the others keep their values)."""
    pairs: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            pairs += [(f"{key}.{field}", v) for field, v in value.items()]
        else:
            pairs.append((key, value))
    return pairs


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: Iterable[Override] | Mapping[str, Any] = ()) -> T:
    """The config `cls` from YAML at `path` (None: the defaults) with `overrides` applied, fully checked.

    `overrides`: `--set` strings, (dotted key, value) pairs, or a mapping of sections (`section_overrides`)."""
    data = read_yaml(path) if path else {}
    if isinstance(overrides, Mapping):
        overrides = section_overrides(overrides)
    for override in overrides:
        apply_override(data, override)
    return from_mapping(cls, data, str(path) if path else "config")


def add_config_arguments(parser: argparse.ArgumentParser, example: str, required: bool = False) -> None:
    """--config and --set, the same on every command."""
    parser.add_argument("--config", required=required, metavar="FILE",
                        help=f"YAML config (e.g. {example})" + ("" if required else "; built-in defaults if omitted"))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one config field with a YAML value, e.g. --set optim.lr=1e-4 (repeatable)")
