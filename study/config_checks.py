"""The checks of a loaded configuration that span several keys or consult a registry: names
that become folders, known cells, corpora and concepts, the ablation grid, the sweep's
ranges. study.config runs them after every key has been checked on its own; each
failure is one ConfigError naming the key, the file and what is allowed.
"""

from __future__ import annotations

import dataclasses

from study.config_schema import ConfigError


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


def check_cross_field(cfg, source: str, build, assign) -> None:
    """Checks across keys and against the registries (cells, corpora, concepts). `build`
    (config.from_dict) and `assign` (a dotted-key setter) check each ablation.grid value
    where it lands."""
    from study.corpora import CORPORA
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
            raw = dataclasses.asdict(cfg)
            raw.pop("ablation")
            assign(raw, key.split("."), v)
            try:
                build(raw, f"{source} (ablation.grid)")
            except ConfigError as e:
                raise ConfigError(str(e)) from None
    if cfg.model.truncated_gradient:
        for name in cfg.ablation.variants or [cfg.model.cell]:
            if not CELLS[name].supports_truncated_gradient:
                ok = [n for n, c in CELLS.items() if c.supports_truncated_gradient]
                raise ConfigError(f"{source}: model.truncated_gradient is true but cell "
                                  f"{name!r} has no truncated gradient; cells with one: "
                                  f"{', '.join(ok)}")
    _check_path(cfg, source)
    if cfg.data.path is None:
        from study.tasks import MIN_LAG, TASKS

        for name in cfg.ablation.datasets or [cfg.data.corpus]:
            if name not in CORPORA and name not in TASKS:
                raise ConfigError(f"{source}: unknown corpus {name!r}; known corpora: "
                                  f"{', '.join(CORPORA)}; generated long-lag tasks: "
                                  f"{', '.join(TASKS)} (or set data.path to a UTF-8 file)")
            if name in TASKS and cfg.data.lag < MIN_LAG[name]:
                raise ConfigError(f"{source}: data.lag = {cfg.data.lag} is below {name}'s "
                                  f"minimum lag {MIN_LAG[name]}")
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


CLIP_MODES = ("none", "norm", "value", "preact")


def parse_clip(spec: str) -> tuple[str, float | None]:
    """'none' -> ("none", None); 'norm:5' -> ("norm", 5.0)."""
    mode, _, value = str(spec).partition(":")
    if mode == "none" and not value:
        return "none", None
    if mode not in CLIP_MODES[1:] or not value:
        raise ValueError(f"{spec!r} is not none, norm:THRESHOLD, value:THRESHOLD or "
                         "preact:THRESHOLD")
    return mode, float(value)


def _check_sweep(cfg, source: str) -> None:
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
        if m not in CLIP_MODES:
            raise ConfigError(f"{source}: sweep.clip_modes has {m!r}; choose from "
                              f"{', '.join(CLIP_MODES)}")
    if s.k1 is not None:
        low = min(s.grid_k2) if s.sampler == "grid" and s.grid_k2 else s.k2_min
        if s.k1 > low:
            raise ConfigError(f"{source}: sweep.k1 = {s.k1} exceeds the smallest k2 = {low}; "
                              "k1 (new steps per update) must be <= every k2")
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


def _check_path(cfg, source: str) -> None:
    """model.engine, train.precision and the device agree with every variant on some
    machine the config allows (train.device auto: CPU or CUDA, with Triton and the C
    kernels assumed present); what this machine lacks is checked before the runs start
    (study.run.check_paths)."""
    from study.engine.cells import get_cell_class
    from study.engine.paths import PathError, choose

    t = cfg.train
    devices = ("cpu", "cuda") if t.device == "auto" else (t.device,)
    for name in cfg.ablation.variants or [cfg.model.cell]:
        errors = []
        for device in devices:
            try:
                choose(get_cell_class(name), cfg.model.engine, device, clip=t.clip,
                       truncated_gradient=cfg.model.truncated_gradient,
                       cuda_graphs=t.cuda_graphs, precision=t.precision, triton=(True, ""),
                       fused=True)
            except PathError as e:
                errors.append(e)
        if len(errors) == len(devices):  # no machine could train it
            raise ConfigError(f"{source}: {errors[-1]}" + (
                f" (variant {name!r})" if cfg.ablation.variants else ""))
