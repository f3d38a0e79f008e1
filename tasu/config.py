"""Typed YAML configs: a dataclass tree filled from a YAML file plus ``key=value`` overrides.

    from tasu.experiment import ExperimentConfig      # the experiment's tree; this module is the loader
    cfg = load_config(ExperimentConfig, "conf/train_text.yaml", ["optim.lr=1e-4", "data.mode=text"])

Every recipe config is checked against the dataclasses before anything runs, so a typo in a key, a
string where a number belongs or a misspelt choice stops with ``FILE: key.path: message`` instead of
a silently ignored setting hours into training.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that does not fit its schema; the message names the file and the key."""


def require_dir(key: str, path: str | None, hint: str) -> Path:
    """``path``, the config's ``key`` (``encoder.path``, ``llm.path``), as a directory that is here.

    Checked before anything is built on it: an empty path would be read as the working directory,
    and a missing one by Hugging Face as a hub repository name. ``hint`` says what to do about it.
    """
    if not path:
        raise ConfigError(f"{key} is not set: {hint}")
    if not Path(path).is_dir():
        raise ConfigError(f"{key} {path!r} is not a directory: {hint}")
    return Path(path)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp`` (converting ints to floats and lists to tuples)."""
    origin = typing.get_origin(tp) or (tp if tp in (list, tuple, dict) else None)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = {}
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, where)
            except ConfigError as err:
                errors[option] = err
        mapping = [option for option in errors if dataclasses.is_dataclass(option)]
        if isinstance(value, dict) and len(mapping) == 1:   # a mapping can only be meant as that one
            raise errors[mapping[0]]
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if not any(value == c and type(value) is type(c) for c in choices):   # true == 1 and 2.0 == 2 in Python
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected a list of {len(args)} items, got {value!r}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config schema uses an unsupported type {tp!r} at {where}")


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{where or 'top level'}: unknown key '{key}'{hint}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}" if where else key)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:  # a field without default, or __post_init__'s own check
        missing = re.findall(r"'(\w+)'", str(err)) if "required positional argument" in str(err) else []
        why = f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required" if missing else err
        raise ConfigError(f"{where or 'top level'}: {why}") from None
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as err:
            raise ConfigError(f"{where or 'top level'}: {err}") from None
    return obj


def apply_override(data: dict, override: str) -> None:
    """Set ``a.b.c=value`` in a nested mapping; the value is parsed as YAML (``1e-4``, ``[0, 0.1]``)."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form key.path=value")
    path, raw = override.split("=", 1)
    keys = path.strip().split(".")
    node = data
    for key in keys[:-1]:
        if node.get(key) is None:   # absent, or a section saved as null (llm.lora): made a mapping
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{key}' is not a mapping")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{override}': the value is not valid YAML ({_yaml_problem(err)})") from None
    if not _small(value):
        raise ConfigError(f"override '{override[:60]}...': {TOO_BIG}")
    node[keys[-1]] = value


# A config holds hundreds of values; nested aliases (a few hundred bytes of "billion laughs") expand to
# billions, which the first message quoting a value would print, in minutes and gigabytes.
MAX_VALUES = 100_000
TOO_BIG = f"it expands to more than {MAX_VALUES:,} values (aliases nested in aliases?): not a config"


def _small(value) -> bool:
    """Whether ``value`` holds at most MAX_VALUES values, counted as expanded (a shared one each time)."""
    todo, n = [value], 0
    while todo:
        v = todo.pop()
        n += 1
        if n > MAX_VALUES:
            return False
        if isinstance(v, dict):
            todo += [*v.keys(), *v.values()]
        elif isinstance(v, (list, tuple)):
            todo += v
    return True


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error in one line: its message spans several, quoting the context and the mark."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flat_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``{"llm": {"path": p}}`` -> ``{"llm.path": p}``): how settings
    are compared and named in messages."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flat_keys(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


# A config nests a few levels. PyYAML reads (and writes) nested lists and mappings by recursion: a few
# hundred '[' overflowed Python's stack, as a RecursionError that named no file.
MAX_DEPTH = 100


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: PyYAML keeps the last value
    silently, so ``optim: {lr: 1e-3}`` then another ``optim:`` a page below would train with the second.
    It refuses lists and mappings nested deeper than MAX_DEPTH as a YAML error too."""

    depth = 0

    def compose_node(self, parent, index):
        if self.depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, "nested too deeply", self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # '<<: *base': the base class merges it, keys here win
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                again = key in first
            except TypeError:   # an unhashable key: the base class says so
                continue
            if again:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' given twice in one mapping (first on line {first[key] + 1})",
                    key_node.start_mark)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_mapping(path: str | Path) -> dict:
    """The YAML file ``path`` as a mapping (empty: ``{}``), or a ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    if not _small(data):
        raise ConfigError(f"{path}: {TOO_BIG}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Read YAML ``path`` (optional), apply ``overrides``, check everything against ``cls``.

    An error is named after its source (see :func:`_source`): the file, or the override that made it."""
    base = {} if path is None else read_mapping(path)
    data = copy.deepcopy(base)
    for override in overrides:
        apply_override(data, override)
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        source = _source(cls, base, overrides, str(err), "overrides" if path is None else str(path))
        raise ConfigError(f"{source}: {err}") from None


def _source(cls: type, base: dict, overrides: typing.Sequence[str], message: str, name: str) -> str:
    """Where the error ``message`` of ``base`` (the file ``name``) with ``overrides`` comes from: the file
    when it has that error by itself, else the first override with which it appears. Guessed from the
    key the error names, it was wrong both ways: a misspelt section ('optimm.lr=1') or a check across
    keys (train.max_steps against optim.total_steps) was the file's, and a file's warmup_steps past its
    total_steps was an override's that set optim.lr."""
    def fails(data: dict) -> bool:
        try:
            from_dict(cls, data)
        except ConfigError as err:
            return str(err) == message
        return False

    data = copy.deepcopy(base)
    if fails(data):
        return name
    for override in overrides[:-1]:
        apply_override(data, override)
        if fails(data):
            return f"override '{override}'"
    return f"override '{overrides[-1]}'"
