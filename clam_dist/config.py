"""Typed configs: dataclasses read from TOML/YAML files plus `section.field=value` overrides.

Every config in clam-dist is a (possibly nested) dataclass. This module turns a mapping
into one, checking field names, types and each field's declared constraints, so a bad
config fails before any work starts with an error that names the bad field, e.g.
``optim.lr: expected a number, got 'fast'`` or ``model.n_clusters must be >= 1, got 0``.

A field declares the values it takes beside its default (in the spirit of
scikit-learn's ``_parameter_constraints``, kept next to the field itself)::

    n_clusters: int = knob(16, Interval(int, 1, MAX_CLUSTERS))
    name: str = knob("clam-train", PathSegment())
    hidden: list[int] | None = knob(None, Each(Interval(int, 1)))

None always passes (an unset optional field); everything else is checked after the
value is coerced to the field's type. Checks that need data (k > rows) stay where the
data is read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, Union, get_args, get_origin, get_type_hints

import tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the field."""


# --- Declared constraints -----------------------------------------------------------------

_RULES = "clam_dist.rules"  # the key of a field's metadata that holds its rules


class Rule(Protocol):
    def check(self, value: Any, where: str) -> None:
        """Raise ConfigError naming ``where`` when ``value`` breaks the rule."""


def _num(x: float) -> str:
    """1.0 -> "1", 0.9 -> "0.9", 16777216 -> "16777216" (never 1.67772e+07)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class Interval:
    """Numbers of ``kind`` (int or float) between ``low`` and ``high`` (None: no bound);
    ``closed`` names the ends that belong to it: "both" [a, b], "left" [a, b), "right"
    (a, b], "neither" (a, b). A float must also be finite: NaN passes every comparison's
    negation, and an infinite rate or ratio is never meant."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: Literal["both", "left", "right", "neither"] = "both"

    def check(self, value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not self._holds(value):
            raise ConfigError(f"{where} must be {self._expected(value)}, got {value!r}")

    @property
    def _low_open(self) -> bool:
        return self.closed in ("right", "neither")

    @property
    def _high_open(self) -> bool:
        return self.closed in ("left", "neither")

    def _above_low(self, value: float) -> bool:
        if self.low is None:
            return True
        return value > self.low if self._low_open else value >= self.low

    def _below_high(self, value: float) -> bool:
        if self.high is None:
            return True
        return value < self.high if self._high_open else value <= self.high

    def _holds(self, value: float) -> bool:
        finite = not isinstance(value, float) or math.isfinite(value)
        return finite and self._above_low(value) and self._below_high(value)

    def _expected(self, value: float) -> str:
        low = None if self.low is None else f"{'>' if self._low_open else '>='} {_num(self.low)}"
        high = (
            None if self.high is None else f"{'<' if self._high_open else '<='} {_num(self.high)}"
        )
        if low and high and self.kind is float:  # a ratio: the whole interval reads best
            text = (
                f"in {'(' if self._low_open else '['}{_num(self.low)}, "
                f"{_num(self.high)}{')' if self._high_open else ']'}"
            )
        elif low and high:  # an integer with a sanity cap: the side that was crossed
            text = low if not self._above_low(value) else high
        else:
            text = low or high or "a number"
        if isinstance(value, float) and not math.isfinite(value):
            text = f"a finite number {text}" if (low or high) else "a finite number"
        return text


# What a name that becomes one folder of a path must not hold.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_LENGTH = 255  # the longest file name most file systems take


@dataclass(frozen=True)
class PathSegment:
    """A name that becomes ONE folder of a path (a run's folder under its storage path, a
    partition's folder under an output): never a path of its own, so it cannot climb out
    of the folder it is joined to or replace it (``../x``, ``/abs``, ``a/b``, ``..``)."""

    def check(self, value: Any, where: str) -> None:
        problem = self._problem(value)
        if problem:
            raise ConfigError(
                f"{where} must be a plain name, one folder ({problem}), got {value!r}"
            )

    @staticmethod
    def _problem(value: Any) -> str | None:
        if not isinstance(value, str):
            return "a string"
        if value.strip() == "":
            return "not empty"
        if value in (".", ".."):
            return "not '.' or '..'"
        if "/" in value or "\\" in value:
            return "no '/' or '\\'"
        if _CONTROL.search(value):
            return "no control characters"
        if len(value) > MAX_NAME_LENGTH:
            return f"at most {MAX_NAME_LENGTH} characters"
        return None


@dataclass(frozen=True)
class Each:
    """``rule`` for every item of a list, named ``field[i]``."""

    rule: Rule

    def check(self, value: Any, where: str) -> None:
        for i, item in enumerate(value):
            if item is not None:
                self.rule.check(item, f"{where}[{i}]")


def knob(
    default: Any = dataclasses.MISSING,
    *rules: Rule,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its default (or ``factory``) and the rules its values obey."""
    metadata = {_RULES: rules}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_field(f: dataclasses.Field, value: Any, where: str) -> None:
    """The declared rules of field ``f`` on ``value``; None (unset) always passes."""
    if value is None:
        return
    for rule in f.metadata.get(_RULES, ()):
        rule.check(value, where)


def check_constraints(config: Any, prefix: str = "") -> None:
    """Every declared rule of a built config, nested sections included: for configs built
    in code rather than by ``from_dict`` (which checks each value as it reads it)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        where = f"{prefix}.{f.name}" if prefix else f.name
        check_field(f, value, where)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_constraints(value, where)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}"
        )
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {list(allowed)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=where)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `--set dcam.hidden=16` means a one-element list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if list in (origin, tp) else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            # the type, not the value: a mistyped storage_options may hold a secret
            raise ConfigError(f"{where}: expected a mapping, got {_kind(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        ):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _kind(value: Any) -> str:
    """What a person calls the type of a parsed value: list, string, number, ..."""
    if value is None:
        return "null"
    return {str: "a string", bool: "true/false", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown or mistyped fields, or values that
    break a field's declared rules, raise ConfigError naming the dotted field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {_kind(data)}")
    where = f"{prefix}." if prefix else ""
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"{where}{odd[0]!r}: field names are strings, got {_kind(odd[0])}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown field(s) {', '.join(where + u for u in unknown)}; "
            f"known fields{' of ' + prefix if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], where + name)
        check_field(fields[name], kwargs[name], where + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc


def to_dict(config: Any) -> dict:
    """A plain, JSON/TOML-serialisable dict of a dataclass config."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def read_mapping(path: str | Path) -> dict:
    """Read a TOML (.toml) or YAML (.yaml/.yml) or JSON file into a dict; a file that
    does not parse is named with its line, one whose top level is not a mapping refused."""
    path = Path(path)
    data = _parse(path, _read_text(path))
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {_kind(data)}")
    return data


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a config file")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(
            f"{path}: unsupported config format {path.suffix!r} (use .toml, .yaml or .json)"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc


# tomllib ends its messages with where: "Invalid value (at line 2, column 5)".
_TOML_WHERE = re.compile(r"^(?P<reason>.*?) \(at line (?P<line>\d+), column \d+\)$")


def _parse(path: Path, text: str) -> Any:
    """The parsed file; a parse error becomes ONE line naming the file and its line."""
    import yaml

    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:
        hit = _TOML_WHERE.match(str(exc))
        line, reason = (hit["line"], hit["reason"]) if hit else (None, str(exc))
        raise _parse_error(path, "TOML", line, reason) from exc
    except json.JSONDecodeError as exc:
        raise _parse_error(path, "JSON", exc.lineno, exc.msg) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _parse_error(path, "YAML", None if mark is None else mark.line + 1, reason) from exc


def _parse_error(path: Path, fmt: str, line: int | str | None, reason: str) -> ConfigError:
    at = f", line {line}" if line is not None else ""
    return ConfigError(f"{path}{at}: cannot parse {fmt}: {reason}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=0.01' -> (['train', 'lr'], 0.01); values parse as JSON when they can."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} names no field before '='")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return keys, value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Merge dotted overrides into a (nested) mapping, returning a new mapping."""
    merged = json.loads(json.dumps(data, default=str))
    for text in overrides or []:
        keys, value = parse_override(text)
        node = merged
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key} is not a section")
        node[keys[-1]] = value
    return merged


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Defaults of ``cls`` <- file at ``path`` <- ``overrides``, validated. A field that a
    config class lists in ``MOVED_FIELDS`` ({"old.dotted.name": "new.dotted.name"}) is
    refused with its new name, so an old config fails saying where the knob went."""
    data = apply_overrides(read_mapping(path) if path else {}, overrides)
    for old, new in getattr(cls, "MOVED_FIELDS", {}).items():
        section, _, name = old.rpartition(".")
        node = data.get(section) if section else data
        if isinstance(node, dict) and name in node:
            raise ConfigError(f"{old}: moved to {new}")
    return from_dict(cls, data)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def dumps_toml(data: dict, prefix: str = "") -> str:
    """Minimal TOML writer for config dicts (scalars, lists, nested tables; None omitted)."""
    lines, tables = [], []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines)
    for key, value in tables:
        name = f"{prefix}.{key}" if prefix else key
        body = dumps_toml(value, name)
        out += f"\n\n[{name}]\n{body}" if out or prefix else f"[{name}]\n{body}"
    return out.strip() + "\n" if not prefix else out
