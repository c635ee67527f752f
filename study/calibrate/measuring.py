"""Measuring, fitting and extrapolating the shapes' costs: measure times one shape (its
updates, evaluation and sample); fit and extrapolate give a shape not measured its costs
from the measured ones (per-step overhead and time per FLOP, COSTS); calibrate does both
within its time cap, measuring again the shapes that look slowed down (_suspects)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from study import data
from study.calibrate.report import duration
from study.calibrate.shapes import Shape
from study.config import Config

EVAL_CHUNK = 100  # steps per timed evaluation chunk (the cost per character barely depends)
PRIME = 50  # the sample's prime from the val split (study.runner.sample_text)
SAMPLED = 20  # characters sampled to time sampling


@contextmanager
def _settings(cfg: Config, device: torch.device) -> Iterator[None]:
    """The run's threads and denormal flushing while measuring, and the global RNGs left
    as they were (building a model draws from them); afterwards torch's thread count is
    restored and denormals are no longer flushed (train sets both for every run)."""
    t = cfg.train
    threads = torch.get_num_threads()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            if t.threads is not None:
                torch.set_num_threads(t.threads)
            torch.set_flush_denormal(t.flush_denormal)
            yield
        finally:
            torch.set_num_threads(threads)
            torch.set_flush_denormal(False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(shape: Shape, steps: int = 5, budget_s: float = 3.0) -> None:
    """Time `shape` in place: up to `steps` updates after one or two warm-up updates (fewer
    when they would take longer than budget_s, never fewer than one), then up to three
    evaluations of one chunk after one, then the sample (its prime alone and with 20
    characters, three times each, after a warm-up)."""
    from study.model import detach_state, sample
    from study.train import build_model, evaluate, make_optimizer, train_step

    cfg, V, device = shape.cfg, shape.vocab_size, shape.device
    t = cfg.train
    B, k2 = t.batch_size, t.seq_len
    k1 = t.k1 or k2
    t0 = time.perf_counter()
    with _settings(cfg, device):
        torch.manual_seed(t.seed)
        model = build_model(cfg, V, device)
        opt = make_optimizer(model, cfg)
        model.train()
        g = torch.Generator().manual_seed(0)
        L = k2 + k1 * (steps + 3)
        x = torch.randint(0, V, (L, B), generator=g).to(device)
        y = torch.randint(0, V, (L, B), generator=g).to(device)
        # the epoch's windows are all k2 long but the first few: time those
        full = [w for w in data.windows(L, k1, k2) if w.end - w.start == k2]
        state, times, warm = None, [], 2
        for i, w in enumerate(full):
            s = time.perf_counter()
            _, _, _, state = train_step(model, opt, x, y, state, w, cfg)
            state = detach_state(state)
            _sync(device)
            dt = time.perf_counter() - s
            if i == 0 and dt > budget_s / 4:
                warm = 1  # an expensive shape: one warm-up is enough
            if i >= warm:
                times.append(dt)
                spent = time.perf_counter() - t0
                if len(times) >= steps or spent + statistics.median(times) > budget_s:
                    break
        shape.update_s = statistics.median(times)
        shape.updates_timed = len(times)

        Te = min(t.eval_seq_len, EVAL_CHUNK)
        ids = torch.randint(0, V, (Te * B + 1,), generator=g)
        evaluate(model, ids, B, Te, device)  # warm-up
        e0, evals = time.perf_counter(), []
        while len(evals) < 3 and (not evals or time.perf_counter() - e0 < budget_s / 3):
            s = time.perf_counter()
            evaluate(model, ids, B, Te, device)
            evals.append(time.perf_counter() - s)
        shape.eval_char_s = statistics.median(evals) / (Te * B)

        prime = torch.randint(0, V, (PRIME,), generator=g).to(device)
        sample(model, prime, 2, generator=torch.Generator().manual_seed(0))  # warm-up
        took: dict[int, list[float]] = {0: [], SAMPLED: []}
        for _ in range(3):
            for n in took:
                s = time.perf_counter()
                sample(model, prime, n, generator=torch.Generator().manual_seed(0))
                took[n].append(time.perf_counter() - s)
        fixed, full = statistics.median(took[0]), statistics.median(took[SAMPLED])
        shape.sample_fixed_s = fixed
        shape.sample_char_s = max(0.0, full - fixed) / SAMPLED
    shape.measured, shape.source = True, ""
    shape.seconds = time.perf_counter() - t0


# what each cost is fitted on: (steps × layers: the per-step overhead, GEMM FLOPs)
COSTS = {
    "update_s": lambda s: (s.cfg.train.seq_len * s.cfg.model.num_layers, s.flops_per_update),
    "eval_char_s": lambda s: (s.cfg.model.num_layers / s.cfg.train.batch_size,
                              s.flops_per_eval_char),
    "sample_char_s": lambda s: (s.cfg.model.num_layers, s.flops_per_eval_char),
    "sample_fixed_s": lambda s: (PRIME * s.cfg.model.num_layers, PRIME * s.flops_per_eval_char),
}


def fit(points: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """(a, b) >= 0 with y ≈ a·x1 + b·x2 over the points (x1, x2, y), least squares on the
    relative error; refitted once without the points measured over 1.5× the first fit (a
    busy moment only ever slows a measurement down). One point: scaled by x2 alone."""
    pts = [p for p in points if p[2] > 0 and math.isfinite(p[2])]
    if not pts:
        return None

    def err(ab, pts):
        return sum(((ab[0] * x1 + ab[1] * x2) / y - 1) ** 2 for x1, x2, y in pts)

    def solve(pts):
        w = [1 / y ** 2 for _, _, y in pts]
        s11 = sum(wi * x1 * x1 for wi, (x1, _, _) in zip(w, pts, strict=True))
        s22 = sum(wi * x2 * x2 for wi, (_, x2, _) in zip(w, pts, strict=True))
        s12 = sum(wi * x1 * x2 for wi, (x1, x2, _) in zip(w, pts, strict=True))
        t1 = sum(wi * x1 * y for wi, (x1, _, y) in zip(w, pts, strict=True))
        t2 = sum(wi * x2 * y for wi, (_, x2, y) in zip(w, pts, strict=True))
        candidates = []
        det = s11 * s22 - s12 * s12
        if len(pts) >= 2 and det > 1e-9 * s11 * s22:
            a, b = (t1 * s22 - t2 * s12) / det, (s11 * t2 - s12 * t1) / det
            if a >= 0 and b >= 0:
                candidates.append((a, b))
        if s22 > 0:
            candidates.append((0.0, t2 / s22))  # by FLOPs alone (first among equals)
        if s11 > 0:
            candidates.append((t1 / s11, 0.0))
        # the first of those that fit as well (to rounding): FLOPs alone before overhead alone
        return min(candidates, key=lambda ab: round(err(ab, pts), 12)) if candidates else None

    ab = solve(pts)
    if ab is None:
        return None
    keep = [p for p in pts if p[2] <= 1.5 * (ab[0] * p[0] + ab[1] * p[1])]
    if 2 <= len(keep) < len(pts):
        ab = solve(keep) or ab
    return ab


def _pool(shape: Shape, measured: list[Shape]) -> list[Shape]:
    """The measured shapes to extrapolate from: those of the same cell, input and device
    when there are two or more (one cell's step costs what it costs), else the device's."""
    same_device = [s for s in measured if s.device == shape.device] or measured
    same_cell = [s for s in same_device if s.cfg.model.cell == shape.cfg.model.cell
                 and s.cfg.model.input == shape.cfg.model.input]
    return same_cell if len(same_cell) >= 2 else same_device


def extrapolate(shape: Shape, measured: list[Shape]) -> None:
    """Each cost of an unmeasured shape from the measured ones: a fit of per-step overhead
    (steps × layers) and FLOPs (per update, per character) to those of the same cell
    (else of the device), evaluated at this shape."""
    pool = _pool(shape, measured)
    for name, features in COSTS.items():
        ab = fit([(*features(s), getattr(s, name)) for s in pool])
        x1, x2 = features(shape)
        setattr(shape, name, math.nan if ab is None else ab[0] * x1 + ab[1] * x2)
    cells = sorted({s.cfg.model.cell for s in pool})
    shape.measured = False
    shape.source = f"fitted to {len(pool)} measured {'/'.join(cells)} shape" + \
        ("s" if len(pool) != 1 else "")


def _order(shapes: list[Shape]) -> list[Shape]:
    """Cheapest first, one shape per model (its vocabulary twins afterwards): the more
    distinct models measured before the time is up, the shorter every extrapolation."""
    firsts, twins, seen = [], [], set()
    for s in sorted(shapes, key=lambda s: s.flops_per_update):
        key = json.loads(s.key)
        key.pop("vocab")
        key = json.dumps(key, sort_keys=True)
        (twins if key in seen else firsts).append(s)
        seen.add(key)
    return firsts + twins


def _calibration_cost(shape: Shape, steps: int, shape_budget_s: float) -> float:
    """About how long measuring a shape takes, from its (predicted) costs."""
    return max(2 * shape.update_s, min(shape_budget_s, (steps + 2) * shape.update_s)) \
        + 2 * EVAL_CHUNK * shape.cfg.train.batch_size * shape.eval_char_s


def _progress(i: int, n: int, shape: Shape, note: str = "") -> None:
    print(f"calibrating {i}/{n}: {shape.label}: {duration(shape.update_s)} per update "
          f"({shape.updates_timed} timed), eval {duration(shape.eval_char_s * 1000)} per 1000 "
          f"chars [{shape.seconds:.1f} s]{note}", file=sys.stderr)


def calibrate(shapes: list[Shape], steps: int = 5, seconds: float = 60.0,
              progress: bool = True, shape_budget_s: float = 3.0) -> tuple[float, bool]:
    """Measure the shapes (in place) for about `seconds` at most, then extrapolate the rest;
    (seconds spent, whether time ran out before every shape was measured).

    After four fifths of the time, a second look at the measurements over twice what the
    other shapes of their cell predict (a busy moment of the machine only ever slows one
    down): each such shape is measured again and keeps the lower of its two costs. The time
    left goes on measuring the shapes not measured yet."""
    t0 = time.perf_counter()
    order = _order(shapes)

    def left(budget):
        return budget - (time.perf_counter() - t0)

    def first_look(budget) -> bool:
        """Measure the shapes not measured yet while `budget` lasts; whether some remain."""
        for i, shape in enumerate(order, 1):
            if shape.measured:
                continue
            measured = [s for s in shapes if s.measured]
            if measured:
                if left(budget) <= 0:
                    return True
                extrapolate(shape, measured)  # a prediction of what measuring it will cost
                if _calibration_cost(shape, steps, shape_budget_s) > left(budget):
                    continue
            measure(shape, steps, min(shape_budget_s, max(left(budget), 0.0)))
            if progress:
                _progress(i, len(order), shape)
        return any(not s.measured for s in shapes)

    first_look(0.8 * seconds)
    measured = [s for s in shapes if s.measured]
    for shape, predicted in _suspects(measured):
        if _calibration_cost(predicted, steps, shape_budget_s) > left(seconds):
            continue
        again = dataclasses.replace(shape)
        measure(again, steps, min(shape_budget_s, max(left(seconds), 0.0)))
        for name in COSTS:
            setattr(shape, name, min(getattr(shape, name), getattr(again, name)))
        shape.seconds += again.seconds
        if progress:
            _progress(order.index(shape) + 1, len(order), shape,
                      f" (measured again: {duration(again.update_s)} per update, where the "
                      f"other {shape.cfg.model.cell} shapes predict "
                      f"{duration(predicted.update_s)})")
    capped = first_look(seconds)  # what time is left after the second look
    measured = [s for s in shapes if s.measured]
    rest = [s for s in shapes if not s.measured]
    for shape in rest:
        extrapolate(shape, measured)
    if progress and rest:
        print(f"calibration: {len(rest)} of {len(shapes)} shapes extrapolated from the "
              f"{len(measured)} measured ({time.perf_counter() - t0:.0f} s of "
              f"--calibrate-seconds {seconds:g} spent)", file=sys.stderr)
    return time.perf_counter() - t0, capped


def _suspects(measured: list[Shape]) -> list[tuple[Shape, Shape]]:
    """(shape, its prediction from the others) for the measured shapes whose update took
    over twice what the other measured shapes predict, the worst first."""
    out = []
    for shape in measured:
        others = [s for s in measured if s is not shape]
        if len(_pool(shape, others)) < 2:
            continue
        predicted = dataclasses.replace(shape)
        extrapolate(predicted, others)
        if shape.update_s > 2 * predicted.update_s:
            out.append((shape, predicted))
    return sorted(out, key=lambda sp: sp[1].update_s / sp[0].update_s)
