"""Building, validating, overriding, hashing and saving the configuration.

Precedence (lowest to highest): schema defaults (the paper settings) < preset < YAML file
(``--config``) < the command's dedicated options (``--prompt``, ``--device``...) < ``--set a.b=c``.
Everything is validated before any model loads; an unknown key or a bad value raises
:class:`~animate124.errors.ConfigError` naming the field (for example ``static.iters``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from animate124.config.schema import RENAMED_SECTIONS, REPLACED_FIELDS, SCHEMA_VERSION, Config
from animate124.config.validation import MAX_INT, check_number, check_text
from animate124.errors import ConfigError

log = logging.getLogger(__name__)

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (tuples become lists so it round-trips through YAML/JSON)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(path: str, tp: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    """Check ``value`` against the annotation ``tp``; return the normalised value."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value not in choices:
            raise ConfigError(
                f"{path}: {value!r} is not one of {', '.join(repr(c) for c in choices)}",
                hint=f"set {path} to one of the listed values",
            )
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and type(None) in get_args(tp):
            return None
        return _coerce(path, args[0], value, meta)
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {value!r}")
        elem = {k: v for k, v in meta.items() if k in ("min", "max")}  # bounds apply to each element
        out = tuple(
            _coerce(f"{path}[{i}]", a, v, elem) for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
        if len(out) == 2 and all(isinstance(x, (int, float)) for x in out) and out[0] > out[1]:
            raise ConfigError(f"{path}: range {list(out)} has low > high")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{path}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        check_text(path, value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if tp is int and hi is None:
            hi = MAX_INT
        if tp is int and lo is None:
            lo = -MAX_INT
        check_number(path, value, lo, hi)
        if meta.get("power_of_two") and (int(value) <= 0 or int(value) & (int(value) - 1)):
            raise ConfigError(f"{path}: {value!r} is not a power of two")
    return value


def _build(cls: type, data: Mapping[str, Any], path: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    renamed = [k for k in unknown if not path and k in RENAMED_SECTIONS]
    if renamed:
        old = renamed[0]
        raise ConfigError(
            f"config section {old!r} was renamed to {RENAMED_SECTIONS[old]!r}",
            hint=f"write {RENAMED_SECTIONS[old]}.<key> instead of {old}.<key>",
        )
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]}",
            hint=f"valid keys{' in ' + path if path else ''}: {', '.join(fields)}",
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            section = data.get(name)
            kwargs[name] = _build(tp, {} if section is None else section, sub)
        elif name in data:
            kwargs[name] = _coerce(sub, tp, data[name], f.metadata)
    return cls(**kwargs)


def _replace_old_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Read the fields of earlier versions (``REPLACED_FIELDS``) as their replacements, with a warning; an
    old field that contradicts its replacement given beside it is an error."""
    for (sec, old), (new, values) in REPLACED_FIELDS.items():
        section = data.get(sec)
        if not isinstance(section, Mapping) or old not in section:
            continue
        section = dict(section)
        value = section.pop(old)
        if value not in values:
            raise ConfigError(
                f"{sec}.{old}: {value!r} is not one of {', '.join(repr(v) for v in values)}",
                hint=f"{sec}.{old} is replaced by {sec}.{new}; set that instead",
            )
        mapped = values[value]
        if new in section and section[new] != mapped:
            raise ConfigError(
                f"{sec}.{old}={value!r} (read as {sec}.{new}={mapped!r}) contradicts {sec}.{new}={section[new]!r}",
                hint=f"{sec}.{old} is replaced by {sec}.{new}; drop the old key",
            )
        section[new] = mapped
        log.warning("%s.%s=%r is deprecated; read as %s.%s=%r", sec, old, value, sec, new, mapped)
        data[sec] = section
    return data


def from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a (partial) nested dict and return the frozen :class:`Config`."""
    data = dict(data)
    version = data.pop("schema_version", SCHEMA_VERSION)
    if version not in (1, SCHEMA_VERSION):  # 1 differs only in two section names (RENAMED_SECTIONS)
        raise ConfigError(
            f"config schema_version {version} is not supported (this version reads {SCHEMA_VERSION})"
        )
    return _build(Config, _replace_old_fields(data), "")


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of ``over`` win; nested mappings merge."""
    out = dict(base)
    for k, v in over.items():
        if v is None and isinstance(out.get(k), Mapping):  # "section:" with nothing under it changes nothing
            continue
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``--set a.b=c`` items into a nested dict; values are YAML scalars (``1e-3``, ``true``, ``[0.2, 0.6]``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"--set {item!r}: expected section.key=value", hint="for example --set static.iters=2000"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: cannot parse the value ({exc})") from exc
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" as a string
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is a value, not a section")
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML config file (a nested mapping of overrides); every problem is a ConfigError naming it."""
    from animate124.readers import read_bytes

    p = Path(path)
    raw = read_bytes(p, what, error=ConfigError, hint="pass a YAML file of config overrides with -c FILE")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {p} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            hint="save it as UTF-8 (YAML files are UTF-8)",
        ) from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{what} {p} is not valid YAML: {detail}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p} must contain a mapping at the top level")
    return data


def resolve_config(
    preset: str = "paper",
    config_file: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
) -> Config:
    """Defaults < preset < YAML file < dedicated command options < ``--set``; validated and frozen."""
    from animate124.config.presets import preset_overrides

    data: dict[str, Any] = preset_overrides(preset)
    if config_file:
        data = deep_merge(data, load_yaml(config_file))
    if options:
        data = deep_merge(data, options)
    data = deep_merge(data, parse_set(sets))
    return from_dict(data)


def replace(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A new validated config with nested ``overrides`` applied."""
    return from_dict(deep_merge(to_dict(cfg), overrides))


def _hashable_section(section: Any) -> dict[str, Any]:
    return {
        f.name: to_dict(getattr(section, f.name))
        for f in dataclasses.fields(section)
        if not f.metadata.get("nohash")
    }


def config_hash(cfg: Config, sections: Iterable[str]) -> str:
    """sha256 (16 hex chars) of the given sections (a stage's, see ``stages.spec``), paths and devices excluded."""
    payload = {s: _hashable_section(getattr(cfg, s)) for s in sections}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML, with the schema version."""
    return yaml.safe_dump({"schema_version": SCHEMA_VERSION, **to_dict(cfg)}, sort_keys=False)


def describe_fields() -> list[tuple[str, str, Any, str]]:
    """(path, type, default, help) for every field: the source of the config docs."""
    rows: list[tuple[str, str, Any, str]] = []
    cfg = Config()
    for sec in dataclasses.fields(Config):
        section = getattr(cfg, sec.name)
        hints = _hints(type(section))
        for f in dataclasses.fields(section):
            rows.append(
                (
                    f"{sec.name}.{f.name}",
                    _type_name(hints[f.name]),
                    to_dict(getattr(section, f.name)),
                    f.metadata["help"],
                )
            )
    return rows
