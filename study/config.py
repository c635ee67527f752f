"""The one typed configuration tree, loaded and validated in one place.

Defaults are Karpathy15's char-rnn setup; a YAML file holds only its differences from
them (as nanoGPT's configs do), and `--set section.key=value` overrides either.
Every key is checked: an unknown key, a value of the wrong type or one out of range is
rejected with the key, the file and what is allowed, before anything runs.

    cfg = load("configs/ablation.yaml", ["train.lr=1e-3"])
    cfg.model.hidden_size, cfg.train.seq_len, ...

The tree is frozen; `updated(cfg, {"model.cell": "gru"})` derives a variant of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from study.config_checks import check_cross_field, parse_clip
from study.config_schema import (
    AblationConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    ProbesConfig,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = ["AblationConfig", "Config", "ConfigError", "DataConfig", "ModelConfig",
           "ProbesConfig", "SweepConfig", "TrackingConfig", "TrainConfig", "apply_overrides",
           "digest", "flatten", "from_dict", "load", "parse_clip", "run_hash", "to_dict",
           "updated"]


# ---------------------------------------------------------------------------------------
# loading and validation

def load(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when path is None), apply `key=value` overrides,
    validate everything, and return the frozen tree."""
    source = str(path) if path is not None else "<defaults>"
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (configs live in configs/, e.g. "
                              "configs/smoke.yaml)")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
    apply_overrides(raw, overrides)
    if overrides:
        source += f" (with --set {' '.join(overrides)})"
    return from_dict(raw, source)


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `section.key=value` overrides (values parsed as YAML) to a raw config tree, in
    place; ConfigError names a malformed one and says how to write it."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. "
                              "--set train.lr=1e-3")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"--set {item!r}: the value {value!r} is not valid YAML ({first});"
                              " quote a string, e.g. --set 'tracking.experiment=\"a: b\"', "
                              "or write lists as [1, 2]") from None
        _assign(raw, key.strip().split("."), parsed)
    return raw


def from_dict(raw: dict, source: str = "<dict>") -> Config:
    cfg = _build(Config, raw, "", source)
    data = raw.get("data") or {}
    if cfg.data.path is not None and data.get("corpus") is None:  # label own files by name
        cfg = updated(cfg, {"data.corpus": Path(cfg.data.path).stem})
    check_cross_field(cfg, source, from_dict, _assign)
    return cfg


def _assign(tree: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {k!r} is not a section")
    tree[keys[-1]] = value


def _build(cls, raw: Any, prefix: str, source: str):
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}; valid keys in "
                              f"{where}: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        if name not in raw:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw[name], f"{prefix}{name}.", source)
        else:
            values[name] = _coerce(raw[name], tp, f, f"{prefix}{name}", source)
    return cls(**values)


def _coerce(value: Any, tp: Any, f: dataclasses.Field, key: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
            raise ConfigError(f"{source}: {key} must map dotted keys to lists of values, "
                              f"e.g. {{model.num_layers: [1, 2]}}; got {value!r}")
        return {str(k): list(v) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_scalar(v, args[0], f, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return _scalar(value, tp, f, key, source)


def _scalar(value: Any, tp: type, f: dataclasses.Field, key: str, source: str) -> Any:
    bad = ConfigError(f"{source}: {key} = {value!r} is not a valid {tp.__name__} "
                      f"({f.metadata.get('doc', '')})")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise bad
        try:
            as_float = float(value)
        except ValueError:
            raise bad from None
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise bad
        value = int(as_float)
    elif tp is float:
        # YAML 1.1 reads "1e-3" as a string; accept any number spelled as one.
        if isinstance(value, bool):
            raise bad
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(value):  # NaN passes every range check; inf is no setting
            raise ConfigError(f"{source}: {key} = {value!r} is not a finite number "
                              f"({f.metadata.get('doc', '')})")
    elif tp is str and not isinstance(value, str):
        raise bad
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        raise ConfigError(f"{source}: {key} = {value!r} is not valid; choose one of: "
                          f"{', '.join(map(str, m['choices']))}")
    lo, hi = m.get("lo"), m.get("hi")
    if lo is not None and (value < lo or (m["lo_open"] and value == lo)) or \
            hi is not None and (value > hi or (m["hi_open"] and value == hi)):
        lo_s = "" if lo is None else f"{lo} {'<' if m['lo_open'] else '<='} "
        hi_s = "" if hi is None else f" {'<' if m['hi_open'] else '<='} {hi}"
        raise ConfigError(f"{source}: {key} = {value!r} is out of range; allowed: "
                          f"{lo_s}{key.rsplit('.', 1)[-1]}{hi_s}")
    return value


# ---------------------------------------------------------------------------------------
# derived configs, flattening, hashing

def updated(cfg: Any, changes: dict[str, Any]):
    """A copy of a (frozen) config with dotted keys replaced: {"model.cell": "gru"}."""
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        if rest:
            cfg = dataclasses.replace(cfg, **{head: updated(getattr(cfg, head), {rest: value})})
        else:
            cfg = dataclasses.replace(cfg, **{head: value})
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def digest(tree: dict, drop: tuple[str, ...] = ()) -> str:
    """The identity of a config tree (a dict of to_dict), leaving out the dotted keys in
    `drop`: 16 hex digits of the sha256 of its sorted JSON."""
    tree = json.loads(json.dumps(tree, default=str))  # a deep copy of plain values
    for dotted in drop:
        *head, last = dotted.split(".")
        node = tree
        for k in head:
            node = node.get(k, {})
        node.pop(last, None)
    blob = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Keys added after runs were stored: left out of a run's identity while they hold their
# default, so that a config that does not use them keeps the identity it had before they
# existed (and its stored runs are still found finished).
ADDED_LATER = ("data.lag", "data.seed", "train.momentum", "train.precision")


def run_hash(cfg: Config) -> str:
    """Identity of one training run: everything that changes its result (data, model,
    training), nothing that only says where it is logged or how fast it runs."""
    d = to_dict(cfg)
    defaults = flatten(to_dict(Config()))
    flat = flatten(d)
    unset = tuple(k for k in ADDED_LATER if flat[k] == defaults[k])
    return digest({k: d[k] for k in ("data", "model", "train")},
                  drop=("train.threads", "train.device", "model.engine",
                        "train.keep_checkpoints", "train.cuda_graphs") + unset)


def describe(cls=Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every field: the config reference in the README."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{prefix}{f.name}", default, f.metadata.get("doc", "")))
    return rows


def main() -> None:
    """`python -m study.config [CONFIG]`: every key with its default (or the config's value)
    and its help text."""
    import sys

    cfg = load(sys.argv[1]) if len(sys.argv) > 1 else None
    flat = flatten(to_dict(cfg)) if cfg else {}
    for key, default, doc in describe():
        value = flat.get(key, default)
        print(f"{key:28s} {value!s:>12}  {doc}")


if __name__ == "__main__":
    main()
