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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key, the file and the fix."""


def opt(default: Any, doc: str, *, choices: tuple | None = None, lo: float | None = None,
        hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """A config field with its help text and its allowed values or range."""
    meta = {"doc": doc, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open,
            "hi_open": hi_open}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    corpus: str = opt("warpeace", "a known corpus (warpeace, linux); with `path`, a label for it")
    path: str | None = opt(None, "any UTF-8 text file to use instead of a known corpus")
    splits: list[float] | None = opt(
        None, "train/val/test fractions; default per corpus (WP 0.8/0.1/0.1, LK 0.9/0.05/0.05)")
    max_chars: int | None = opt(
        None, "use only the first N characters of the file (quick runs)", lo=1000)


@dataclass(frozen=True)
class ModelConfig:
    cell: str = opt("lstm", "the cell variant (see study.engine.cells.CELLS)")
    hidden_size: int = opt(128, "units per layer (H)", lo=1, hi=16384)
    num_layers: int = opt(2, "stacked recurrent layers (L)", lo=1, hi=16)
    input: str = opt("onehot", "how characters enter layer 1", choices=("onehot", "embedding"))
    embedding_size: int | None = opt(None, "embedding width when input=embedding (default H)",
                                     lo=1)
    dropout: float = opt(0.0, "dropout on every layer's output", lo=0.0, hi=1.0, hi_open=True)
    init_range: float = opt(0.08, "weights uniform in ±init_range (char-rnn)", lo=0.0,
                            lo_open=True)
    forget_bias: float = opt(0.0, "initial forget-gate bias (Jozefowicz15 suggest 1)")
    truncated_gradient: bool = opt(
        False, "Hochreiter97's truncated gradient (cells that support it: lstm1997)")
    engine: str = opt("auto", "the step's elementwise code: fused C kernels when they build "
                      "(auto), required (fused), or plain torch (torch)",
                      choices=("auto", "fused", "torch"))


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = opt("rmsprop", "optimizer", choices=("rmsprop", "adam"))
    lr: float = opt(2e-3, "learning rate", lo=0.0, lo_open=True)
    rmsprop_alpha: float = opt(0.95, "RMSProp decay (char-rnn: 0.95)", lo=0.0, hi=1.0,
                               lo_open=True, hi_open=True)
    lr_decay: float = opt(0.95, "multiply the learning rate by this every epoch after "
                          "`lr_decay_after`", lo=0.0, hi=1.0, lo_open=True)
    lr_decay_after: int = opt(10, "first epoch after which the learning rate decays", lo=0)
    batch_size: int = opt(100, "parallel streams (B)", lo=1)
    seq_len: int = opt(100, "TBPTT k2: steps back-propagated per update", lo=1)
    k1: int | None = opt(None, "TBPTT k1: new steps per update (default seq_len; <= seq_len)",
                         lo=1)
    time_reduction: str = opt(
        "mean", "loss over the k1 new steps: mean, or sum (char-rnn sums gradients over time)",
        choices=("mean", "sum"))
    epochs: int = opt(50, "maximum number of passes over the training split", lo=1)
    patience: int | None = opt(5, "early stopping: epochs without a better val loss (null: "
                               "off)", lo=1)
    clip: str = opt("value", "gradient clipping: none, norm (Pascanu13) or value (char-rnn)",
                    choices=("none", "norm", "value"))
    clip_value: float = opt(5.0, "the clipping threshold", lo=0.0, lo_open=True)
    divergence_factor: float = opt(3.0, "stop when the loss exceeds this times the initial",
                                   lo=1.0, lo_open=True)
    eval_seq_len: int = opt(500, "chunk length when evaluating (no gradients)", lo=1)
    sample_chars: int = opt(300, "length of the text sample logged every epoch", lo=0)
    seed: int = opt(0, "seed for torch, numpy and random", lo=0)
    device: str = opt("auto", "auto picks CUDA when present", choices=("auto", "cpu", "cuda"))
    threads: int | None = opt(None, "torch intra-op threads (default: torch's choice)", lo=1)
    flush_denormal: bool = opt(True, "flush denormal floats to zero (x86 FTZ/DAZ): values "
                               "below 1.2e-38 become 0 instead of slowing arithmetic ~100x")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = opt(True, "log to MLflow")
    uri: str | None = opt(None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                          "sqlite:///<results_dir>/mlflow.db)")
    experiment: str = opt("study", "MLflow experiment name")
    results_dir: str = opt("results", "where the store, artifacts, checkpoints and caches go")
    log_checkpoint: bool = opt(True, "log the best checkpoint as an MLflow artifact")


@dataclass(frozen=True)
class ProbesConfig:
    enabled: bool = opt(True, "analyse every run after training (saturation, units, error flow)")
    every: int = opt(0, "also log saturation and unit scores every N epochs (0: at the end only)",
                     lo=0)
    chars: int = opt(100_000, "characters of the validation split the probes read", lo=1000)
    streams: int = opt(20, "parallel streams the stretch is read in", lo=1)
    warmup: int = opt(50, "steps at each stream's start left out of the statistics", lo=0)
    left: float = opt(0.1, "a gate is left-saturated below this", lo=0.0, hi=1.0)
    right: float = opt(0.9, "a gate is right-saturated above this", lo=0.0, hi=1.0)
    gru_update: str = opt(
        "pytorch", "GRU update gate shown as u (PyTorch: h = (1-u) n + u h') or as char-rnn's "
        "1 - u", choices=("pytorch", "charrnn"))
    concepts: list[str] = opt([], "concepts to score (empty: all of study.probes.concepts)")
    top_units: int = opt(3, "units per concept drawn as traces", lo=1)
    trace_chars: int = opt(1500, "characters in each HTML trace (PNG: the first 600)", lo=50)
    error_flow: bool = opt(True, "measure ‖dℓ_t/dh_(t-q)‖ and ‖dℓ_t/dc_(t-q)‖ against q")
    error_flow_q: int = opt(200, "largest distance q", lo=1)
    error_flow_batch: int = opt(32, "sequences the error flow is averaged over", lo=1)


@dataclass(frozen=True)
class SweepConfig:
    enabled: bool = opt(False, "run an Optuna study over TBPTT and clipping instead of the "
                        "ablation grid (one variant and corpus: model.cell, data.corpus)")
    name: str | None = opt(None, "the study's name (default: the config's name); re-running "
                           "the same command resumes it")
    trials: int = opt(20, "finished trials wanted (grid: at most the grid's size)", lo=1)
    sampler: str = opt("tpe", "grid (the heatmap), tpe or random",
                       choices=("grid", "tpe", "random"))
    seed: int = opt(0, "sampler seed (worker w uses seed + w)", lo=0)
    pruner: str = opt("median", "stop bad trials early on their per-epoch validation loss",
                      choices=("none", "median", "hyperband"))
    pruner_startup_trials: int = opt(3, "median: finished trials before pruning starts", lo=0)
    pruner_warmup_epochs: int = opt(1, "epochs before a trial can be pruned", lo=0)
    storage: str | None = opt(None, "Optuna storage URL (default: a journal file under "
                              "<results>/optuna/; postgresql://... for several machines)")
    workers: int = opt(1, "local worker processes (the --workers flag overrides)", lo=1)
    k2_min: int = opt(10, "smallest k2 (steps back-propagated)", lo=1)
    k2_max: int = opt(250, "largest k2 (log scale)", lo=1)
    k1_fractions: list[float] = opt([1.0, 0.5, 0.25], "k1 as a fraction of k2 (1.0: k1 = k2, "
                                    "the paper's setting)")
    clip_modes: list[str] = opt(["none", "norm", "value"], "clipping schemes to try")
    clip_min: float = opt(0.1, "smallest clipping threshold (log scale)", lo=0.0, lo_open=True)
    clip_max: float = opt(10.0, "largest clipping threshold", lo=0.0, lo_open=True)
    lr_min: float | None = opt(None, "also search the learning rate from lr_min ...",
                               lo=0.0, lo_open=True)
    lr_max: float | None = opt(None, "... to lr_max (log scale)", lo=0.0, lo_open=True)
    grid_k2: list[int] = opt([25, 50, 100, 200], "grid sampler: k2 values")
    grid_k1_fraction: list[float] = opt([1.0], "grid sampler: k1 fractions")
    grid_clip: list[str] = opt(["none", "norm:1", "norm:5", "value:1", "value:5"],
                               "grid sampler: none, or mode:threshold")
    grid_lr: list[float] = opt([], "grid sampler: learning rates (empty: train.lr)")


@dataclass(frozen=True)
class AblationConfig:
    variants: list[str] = opt([], "cells to train (empty: model.cell)")
    datasets: list[str] = opt([], "corpora to train on (empty: data.corpus)")
    seeds: list[int] = opt([], "seeds (empty: train.seed)")
    grid: dict[str, list] = opt({}, "more axes: a dotted key and its values, e.g. "
                                "{model.num_layers: [1, 2, 3]}")
    match_params_to: str | None = opt(
        None, "give each variant the width whose parameter count is closest to this cell's "
        "at model.hidden_size (Karpathy15's equal-size rows)")
    storage: str | None = opt(
        None, "Optuna storage URL of the grid's work queue (default: a journal file under "
        "<results>/optuna/; postgresql://... to share one grid between machines)")


@dataclass(frozen=True)
class Config:
    name: str = opt("study", "a name for this config (the parent run's name)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


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
    if overrides:
        source += f" (with --set {' '.join(overrides)})"
    return from_dict(raw, source)


def from_dict(raw: dict, source: str = "<dict>") -> Config:
    cfg = _build(Config, raw, "", source)
    data = raw.get("data") or {}
    if cfg.data.path is not None and data.get("corpus") is None:  # label own files by name
        cfg = updated(cfg, {"data.corpus": Path(cfg.data.path).stem})
    _check_cross_field(cfg, source)
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


def check_name(value: str, key: str, source: str = "") -> None:
    """Names that become folder or file names (experiment, config and study names) must
    stay inside results_dir: no path separators, no '..', nothing empty or hidden."""
    bad = (not value.strip() or "/" in value or "\\" in value or ".." in value
           or value.startswith(".") or any(ord(c) < 32 for c in value))
    if bad:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{key} = {value!r} is not a usable name: it becomes a folder "
                          "name under tracking.results_dir, so it must be non-empty, not start "
                          "with '.', and hold no '/', '\\', '..' or control characters; e.g. "
                          "'ablation-wp'")


def _check_cross_field(cfg: Config, source: str) -> None:
    from study.data import CORPORA
    from study.engine.cells import CELLS, get_cell_class  # the registry is the list of valid names

    for key, value in (("name", cfg.name), ("tracking.experiment", cfg.tracking.experiment),
                       ("sweep.name", cfg.sweep.name)):
        if value is not None:
            check_name(value, key, source)

    for name in [cfg.model.cell, *cfg.ablation.variants,
                 *([cfg.ablation.match_params_to] if cfg.ablation.match_params_to else [])]:
        try:
            get_cell_class(name)
        except KeyError as e:
            raise ConfigError(f"{source}: {e.args[0]}") from None
    for key, values in cfg.ablation.grid.items():
        section = key.split(".")[0]
        if section not in ("data", "model", "train") or "." not in key:
            raise ConfigError(f"{source}: ablation.grid key {key!r} must name a data, model "
                              "or train setting, e.g. model.num_layers")
        if not values:
            raise ConfigError(f"{source}: ablation.grid.{key} has no values")
        for v in values:  # each value must be valid where it lands
            raw = to_dict(cfg)
            raw.pop("ablation")
            _assign(raw, key.split("."), v)
            try:
                from_dict(raw, f"{source} (ablation.grid)")
            except ConfigError as e:
                raise ConfigError(str(e)) from None
    if cfg.model.truncated_gradient:
        for name in cfg.ablation.variants or [cfg.model.cell]:
            if not CELLS[name].supports_truncated_gradient:
                ok = [n for n, c in CELLS.items() if c.supports_truncated_gradient]
                raise ConfigError(f"{source}: model.truncated_gradient is true but cell "
                                  f"{name!r} has no truncated gradient; cells with one: "
                                  f"{', '.join(ok)}")
    if cfg.data.path is None:
        for name in cfg.ablation.datasets or [cfg.data.corpus]:
            if name not in CORPORA:
                raise ConfigError(f"{source}: unknown corpus {name!r}; known corpora: "
                                  f"{', '.join(CORPORA)} (or set data.path to a UTF-8 file)")
    elif cfg.ablation.datasets:
        raise ConfigError(f"{source}: data.path is set, so ablation.datasets must be empty "
                          "(one file per config); remove one of them")
    if cfg.data.splits is not None:
        s = cfg.data.splits
        if len(s) != 3 or min(s) <= 0 or abs(sum(s) - 1) > 1e-6:
            raise ConfigError(f"{source}: data.splits = {s} must be three fractions "
                              "train/val/test, each > 0 (the test loss needs a test split), "
                              "summing to 1, e.g. [0.8, 0.1, 0.1]")
    if cfg.probes.left >= cfg.probes.right:
        raise ConfigError(f"{source}: probes.left = {cfg.probes.left} must be below "
                          f"probes.right = {cfg.probes.right}")
    from study.probes.concepts import CONCEPTS

    for name in cfg.probes.concepts:
        if name not in CONCEPTS:
            raise ConfigError(f"{source}: unknown concept {name!r} in probes.concepts; known: "
                              f"{', '.join(CONCEPTS)}")
    if cfg.sweep.enabled:
        _check_sweep(cfg, source)
    if cfg.train.k1 is not None and cfg.train.k1 > cfg.train.seq_len:
        raise ConfigError(f"{source}: train.k1 = {cfg.train.k1} must be <= train.seq_len = "
                          f"{cfg.train.seq_len} (k2, the steps back-propagated)")


def parse_clip(spec: str) -> tuple[str, float | None]:
    """'none' -> ("none", None); 'norm:5' -> ("norm", 5.0)."""
    mode, _, value = str(spec).partition(":")
    if mode == "none" and not value:
        return "none", None
    if mode not in ("norm", "value") or not value:
        raise ValueError(f"{spec!r} is not none, norm:THRESHOLD or value:THRESHOLD")
    return mode, float(value)


def _check_sweep(cfg: Config, source: str) -> None:
    s = cfg.sweep
    if cfg.ablation.variants or cfg.ablation.datasets or cfg.ablation.seeds or \
            cfg.ablation.grid:
        raise ConfigError(f"{source}: a sweep studies one variant on one corpus (model.cell, "
                          "data.corpus); leave the ablation section empty")
    if s.k2_min > s.k2_max or s.clip_min > s.clip_max:
        raise ConfigError(f"{source}: sweep ranges need min <= max (k2 {s.k2_min}..{s.k2_max},"
                          f" clip {s.clip_min}..{s.clip_max})")
    if (s.lr_min is None) != (s.lr_max is None) or (s.lr_min or 0) > (s.lr_max or 0):
        raise ConfigError(f"{source}: set both sweep.lr_min and sweep.lr_max (min <= max) to "
                          "search the learning rate, or neither")
    for f in [*s.k1_fractions, *s.grid_k1_fraction]:
        if not 0 < f <= 1:
            raise ConfigError(f"{source}: k1 fraction {f} must be in (0, 1]")
    for m in s.clip_modes:
        if m not in ("none", "norm", "value"):
            raise ConfigError(f"{source}: sweep.clip_modes has {m!r}; choose from none, norm, "
                              "value")
    if s.sampler == "grid":
        if not s.grid_k2 or not s.grid_clip or not s.grid_k1_fraction:
            raise ConfigError(f"{source}: the grid sampler needs sweep.grid_k2, grid_clip and "
                              "grid_k1_fraction")
        for k in s.grid_k2:
            if not s.k2_min <= k <= s.k2_max:
                raise ConfigError(f"{source}: sweep.grid_k2 value {k} is outside k2_min.."
                                  f"k2_max = {s.k2_min}..{s.k2_max}")
        for spec in s.grid_clip:
            try:
                mode, value = parse_clip(spec)
            except ValueError as e:
                raise ConfigError(f"{source}: sweep.grid_clip: {e}") from None
            if value is not None and not s.clip_min <= value <= s.clip_max:
                raise ConfigError(f"{source}: sweep.grid_clip {spec!r}: threshold outside "
                                  f"clip_min..clip_max = {s.clip_min}..{s.clip_max}")
        if s.grid_lr and s.lr_min is not None and not all(
                s.lr_min <= v <= s.lr_max for v in s.grid_lr):
            raise ConfigError(f"{source}: sweep.grid_lr values must lie in lr_min..lr_max")


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


def run_hash(cfg: Config) -> str:
    """Identity of one training run: everything that changes its result (data, model,
    training), nothing that only says where it is logged."""
    ident = {"data": to_dict(cfg.data), "model": to_dict(cfg.model), "train": to_dict(cfg.train)}
    for key in ("threads", "device"):  # how fast, not what
        ident["train"].pop(key)
    ident["model"].pop("engine")
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
