"""The search space: Optuna suggestions, grid points, samplers and pruners, and the
training config of one trial."""

from __future__ import annotations

import json

import optuna

from study import config as config_mod
from study.config import Config, parse_clip, updated


def suggest(trial: optuna.Trial, s: config_mod.SweepConfig) -> dict:
    """The trial's parameters (fixed ones when it was enqueued from the grid)."""
    p = {"k2": trial.suggest_int("k2", s.k2_min, s.k2_max, log=True)}
    if s.k1 is None:  # with sweep.k1 set, k1 is fixed and not a parameter
        p["k1_fraction"] = trial.suggest_categorical("k1_fraction", _fractions(s))
    p["clip_mode"] = trial.suggest_categorical("clip_mode", _modes(s))
    if p["clip_mode"] != "none":
        p["clip_value"] = trial.suggest_float("clip_value", s.clip_min, s.clip_max, log=True)
    if s.lr_min is not None or (s.sampler == "grid" and s.grid_lr):
        lo, hi = (s.lr_min, s.lr_max) if s.lr_min is not None else \
            (min(s.grid_lr), max(s.grid_lr))
        p["lr"] = trial.suggest_float("lr", lo, hi, log=True)
    return p


def _fractions(s):
    return sorted(set(s.k1_fractions) | (set(s.grid_k1_fraction) if s.sampler == "grid"
                                         else set()))


def _modes(s):
    modes = list(s.clip_modes)
    if s.sampler == "grid":
        modes += [parse_clip(c)[0] for c in s.grid_clip if parse_clip(c)[0] not in modes]
    return modes


def grid_points(s: config_mod.SweepConfig) -> list[dict]:
    points = []
    for k2 in s.grid_k2:
        for f in (s.grid_k1_fraction if s.k1 is None else [None]):
            for clip in s.grid_clip:
                mode, value = parse_clip(clip)
                for lr in s.grid_lr or [None]:
                    p = {"k2": k2, **({"k1_fraction": f} if f is not None else {}),
                         "clip_mode": mode}
                    if value is not None:
                        p["clip_value"] = value
                    if lr is not None:
                        p["lr"] = lr
                    points.append(p)
    return points


def param_key(params: dict) -> str:
    return json.dumps({k: (float(v) if isinstance(v, float) else v)
                       for k, v in sorted(params.items())}, sort_keys=True)


def trial_config(cfg: Config, p: dict) -> Config:
    k2 = int(p["k2"])
    changes = {"train.seq_len": k2, "train.k1": k1_of(cfg.sweep, p), "train.clip": p["clip_mode"]}
    if "clip_value" in p:
        changes["train.clip_value"] = float(p["clip_value"])
    if "lr" in p:
        changes["train.lr"] = float(p["lr"])
    return updated(cfg, changes)


def k1_of(s: config_mod.SweepConfig, p: dict) -> int:
    """A trial's k1: sweep.k1 when it is fixed, else its fraction of k2."""
    return s.k1 if s.k1 is not None else max(1, round(p["k1_fraction"] * int(p["k2"])))


def clip_label(p: dict) -> str:
    return "none" if p.get("clip_mode") == "none" else f"{p['clip_mode']}:{p['clip_value']:g}"


def make_sampler(s: config_mod.SweepConfig, worker: int = 0):
    seed = s.seed + worker
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: points are enqueued


def make_pruner(cfg: Config):
    s = cfg.sweep
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials,
                                           n_warmup_steps=s.pruner_warmup_epochs)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, s.pruner_warmup_epochs),
                                              max_resource=cfg.train.epochs)
    return optuna.pruners.NopPruner()
