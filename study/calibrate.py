"""How long a plan will take, from a short calibration on this machine (`--dry-run`).

    est = estimate(plan, corpora)            # measures, then adds up
    print("\\n".join(est.lines()))            # per run, then the total

Measured, not guessed. The plan's runs are grouped by training shape: everything that
changes what an update costs (the model section, the batch and TBPTT shape, clipping, the
optimizer, threads, precision and whatever else train.* gains that is not on the list of
cost-free keys below; the vocabulary size; the device). Per shape, the model is built by
study.train.build_model (so it trains the way the run will), a few TBPTT updates are taken
by study.train.train_step on random characters after a warm-up and timed (the median gives
seconds per update), study.train.evaluate's no-gradient pass is timed per character, and so
is the sample each epoch logs.

A run then costs, per epoch, its updates (data.windows over its train split, as training
schedules them) + one validation pass + the sample; times train.epochs (early stopping can
only shorten it: "at most"); + one pass over the test split (on a generated long-lag task,
the target losses' extra passes too). Not timed: the probes and the error analysis after
training, checkpoint writes, and runs that already finished (skipped when the plan runs).

The calibration is capped (`seconds`): shapes are measured cheapest first, one per model
before its vocabulary twins; when the time is up the shapes left are extrapolated from the
measured ones, and marked so: each cost is fitted as a per-step overhead (steps × layers)
plus a time per FLOP (FLOPs per character × characters) to the measured shapes of the same
cell (else of the device), which a small, overhead-bound shape scaled by FLOPs alone would
overstate many times over.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

import torch

from study import data
from study.config import Config
from study.data import Corpus, corpus_key

if TYPE_CHECKING:
    from study.ablation import RunSpec

# keys that do not change what an update or an evaluation costs
FREE_MODEL = ("init_range", "forget_bias")
FREE_TRAIN = ("lr", "momentum", "rmsprop_alpha", "lr_decay", "lr_decay_after", "epochs",
              "patience", "clip_value", "divergence_factor", "sample_chars",
              "keep_checkpoints", "seed", "time_reduction", "device")
EVAL_CHUNK = 100  # steps per timed evaluation chunk (the cost per character barely depends)
PRIME = 50  # the sample's prime from the val split (study.runner.sample_text)
SAMPLED = 20  # characters sampled to time sampling


@dataclass
class Shape:
    """One training shape of the plan and what it costs (measured or extrapolated)."""

    key: str
    cfg: Config  # the config of its first run
    vocab_size: int
    device: torch.device
    runs: int = 0
    measured: bool = False
    source: str = ""  # extrapolated: the label of the measured shape it was scaled from
    update_s: float = math.nan  # seconds per TBPTT update of k2 steps
    eval_char_s: float = math.nan  # seconds per character of evaluate()
    sample_fixed_s: float = math.nan  # the sample: its prime and set-up ...
    sample_char_s: float = math.nan  # ... and seconds per sampled character
    updates_timed: int = 0
    seconds: float = 0.0  # spent measuring it

    @property
    def label(self) -> str:
        m, t = self.cfg.model, self.cfg.train
        k1 = t.k1 or t.seq_len
        return (f"{m.cell} {m.num_layers}×{m.hidden_size}, V {self.vocab_size}, batch "
                f"{t.batch_size} × k2 {t.seq_len}" + (f" k1 {k1}" if k1 != t.seq_len else "")
                + f" on {self.device.type}")

    @property
    def flops_per_update(self) -> float:
        t = self.cfg.train
        return 3 * forward_flops_per_char(self.cfg.model, self.vocab_size) * t.seq_len * \
            t.batch_size

    @property
    def flops_per_eval_char(self) -> float:
        return forward_flops_per_char(self.cfg.model, self.vocab_size)


@dataclass
class RunEstimate:
    spec: RunSpec
    shape: Shape
    updates_per_epoch: int
    epochs: int
    train_epoch_s: float  # the epoch's updates
    val_s: float  # the validation pass(es) after each epoch
    sample_s: float  # the sample logged after each epoch
    test_s: float  # after training: the test split (and a task's target passes)

    @property
    def epoch_s(self) -> float:
        return self.train_epoch_s + self.val_s + self.sample_s

    @property
    def total_s(self) -> float:
        return self.epochs * self.epoch_s + self.test_s


@dataclass
class Estimate:
    runs: list[RunEstimate]
    shapes: list[Shape]
    workers: int = 1
    calibration_s: float = 0.0
    day: str = field(default_factory=lambda: date.today().isoformat())
    capped: bool = False  # the calibration's time ran out before every shape was measured
    load: tuple[float, int] | None = None  # (1-minute load average, CPU cores) after it

    @property
    def total_s(self) -> float:
        """The runs' time added up (one after another)."""
        return sum(r.total_s for r in self.runs)

    @property
    def wall_s(self) -> float:
        """In sequence, the sum; with workers, the sum shared evenly (but never less than
        the longest run), assuming the workers do not slow each other."""
        if not self.runs:
            return 0.0
        return max(self.total_s / self.workers, max(r.total_s for r in self.runs))

    @property
    def measured(self) -> list[Shape]:
        return [s for s in self.shapes if s.measured]

    @property
    def extrapolated(self) -> list[Shape]:
        return [s for s in self.shapes if not s.measured]

    def where(self) -> str:
        """The device(s) the estimate is for: `cpu (2 threads)`, `cuda (NVIDIA H200)`."""
        out = []
        for s in self.shapes:
            if s.device.type == "cuda":
                name = torch.cuda.get_device_name(s.device) if torch.cuda.is_available() \
                    else "?"
                label = f"cuda ({name})"
            else:
                n = s.cfg.train.threads or torch.get_num_threads()
                label = f"{s.device.type} ({n} thread{'s' if n != 1 else ''})"
            if label not in out:
                out.append(label)
        return " + ".join(out) or "no device"

    def summary(self) -> str:
        """The one line: `estimated wall time on cpu (2 threads): at most 41.5 h for 72 runs
        (50 epochs each; calibrated 2026-11-30 from 12 shapes, 5 updates each; probes not
        included)`."""
        if not self.runs:
            return "estimated wall time: nothing to estimate (the plan has no runs)"
        epochs = sorted({r.epochs for r in self.runs})
        each = f"{epochs[0]} epochs each" if len(epochs) == 1 else \
            f"{epochs[0]}–{epochs[-1]} epochs"
        timed = sorted({s.updates_timed for s in self.measured})
        updates = f"{timed[0]}" if len(timed) == 1 else f"{timed[0]}–{timed[-1]}"
        n, m = len(self.shapes), len(self.measured)
        shapes = f"{n} shape{'s' if n != 1 else ''}" if m == n else \
            f"{m} of {n} shapes ({n - m} extrapolated by FLOPs and steps)"
        workers = "" if self.workers == 1 else f" on {self.workers} workers"
        return (f"estimated wall time on {self.where()}: at most {duration(self.wall_s)} for "
                f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}{workers} ({each}; "
                f"calibrated {self.day} from {shapes}, {updates} update"
                f"{'s' if timed[-1] != 1 else ''} each; probes not included)")

    def notes(self) -> list[str]:
        if not self.runs:
            return []
        stop = ("early stopping (train.patience) can only shorten it"
                if any(r.spec.cfg.train.patience is not None for r in self.runs)
                else "no early stopping")
        order = ("runs in sequence (--workers N shares them out)" if self.workers == 1 else
                 f"{self.workers} workers, assumed not to slow each other (on a CPU they "
                 "share its cores)")
        out = [f"  at most: every run trains all its epochs ({stop}); {order}; per epoch its "
               "updates, a validation pass and the sample, then the test split.",
               "  not included: the probes and the error analysis after training, checkpoint "
               "writes, and runs already finished (skipped when the plan runs).",
               f"  calibration: {self.calibration_s:.1f} s on this machine, "
               f"{len(self.measured)} shape(s) measured"]
        if self.extrapolated:
            out[-1] += (f"; {len(self.extrapolated)} extrapolated (marked ~): per-step "
                        "overhead and FLOPs per char fitted to the measured shapes of the same "
                        "cell"
                        + (" when the calibration's time was up (--calibrate-seconds)"
                           if self.capped else ""))
        out[-1] += "."
        if self.load is not None and self.load[0] > self.load[1] + 0.5:
            out.append(f"  this machine was busy while calibrating (load average {self.load[0]:.1f}"
                       f" on {self.load[1]} cores): the times measured, and so the estimate, are"
                       " longer than on an idle machine.")
        return out

    def lines(self) -> list[str]:
        """Per run (at most, with its parts), the total, and what it assumes."""
        if not self.runs:
            return [self.summary()]
        width = max(len(r.spec.name) for r in self.runs)
        out = ["estimated time per run, at most: (updates per epoch × time per update + "
               "validation and sample) × epochs + test; ~ extrapolated:"]
        for r in self.runs:
            mark = "~" if not r.shape.measured else " "
            out.append(
                f"  {r.spec.name:{width}s} ({r.updates_per_epoch:>7,} × "
                f"{duration(r.shape.update_s):>8s} + {duration(r.val_s + r.sample_s):>8s})"
                f" × {r.epochs} + {duration(r.test_s):>8s} = {mark}{duration(r.total_s)}")
        return [*out, self.summary(), *self.notes()]


def duration(s: float) -> str:
    """Seconds in the unit that reads best: µs, ms, s, min, h (and days past three)."""
    if not math.isfinite(s):
        return "?"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 90:
        return f"{s:.1f} s"
    if s < 90 * 60:
        return f"{s / 60:.1f} min"
    hours = f"{s / 3600:.1f} h"
    return hours if s < 72 * 3600 else f"{hours} ({s / 86400:.1f} days)"


# ---------------------------------------------------------------------------------------
# shapes


def forward_flops_per_char(m, vocab_size: int) -> float:
    """The forward GEMMs per character (a·x + s'·R per layer, the decoder); training is
    three times this. The first layer's one-hot input is a row lookup: no GEMM."""
    from study.engine.cells import get_cell_class

    H = m.hidden_size
    cell = get_cell_class(m.cell)(H)
    first_in = (m.embedding_size or H) if m.input == "embedding" else 0
    flops = 0.0
    for layer in range(m.num_layers):
        flops += 2.0 * cell.G * H * ((H if layer else first_in) + cell.state_size)
    return flops + 2.0 * H * vocab_size


def shape_key(cfg: Config, vocab_size: int, device: torch.device) -> str:
    """What decides the cost of an update and of an evaluation: runs with equal keys cost
    the same per update."""
    m = dataclasses.asdict(cfg.model)
    for k in FREE_MODEL:
        m.pop(k, None)
    m["dropout"] = m["dropout"] > 0
    m["embedding_size"] = (m["embedding_size"] or m["hidden_size"]) \
        if m["input"] == "embedding" else None
    t = dataclasses.asdict(cfg.train)
    for k in FREE_TRAIN:
        t.pop(k, None)
    t["k1"] = cfg.train.k1 or cfg.train.seq_len
    return json.dumps({"model": m, "train": t, "vocab": vocab_size, "device": str(device)},
                      sort_keys=True, default=str)


def run_device(cfg: Config, device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    from study.train import pick_device

    return pick_device(cfg.train.device)


def shapes_of(plan: list[RunSpec], corpora: dict[str, Corpus], device=None
              ) -> tuple[dict[str, Shape], list[str]]:
    """The plan's distinct shapes by key, and each run's key (in plan order)."""
    shapes: dict[str, Shape] = {}
    keys = []
    for spec in plan:
        V = corpora[corpus_key(spec.cfg.data)].vocab_size
        dev = run_device(spec.cfg, device)
        key = shape_key(spec.cfg, V, dev)
        shapes.setdefault(key, Shape(key, spec.cfg, V, dev)).runs += 1
        keys.append(key)
    return shapes, keys


# ---------------------------------------------------------------------------------------
# measuring


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


# ---------------------------------------------------------------------------------------
# adding up


def updates_per_epoch(cfg: Config, corpus: Corpus) -> int:
    """The TBPTT updates of one epoch, as study.train schedules them."""
    t = cfg.train
    length = (len(corpus.splits["train"]) - 1) // t.batch_size
    return len(data.windows(length, t.k1 or t.seq_len, t.seq_len))


def _eval_chars(corpus: Corpus, split: str, batch_size: int) -> int:
    return (len(corpus.splits[split]) - 1) // batch_size * batch_size


def project(plan: list[RunSpec], corpora: dict[str, Corpus], shapes: dict[str, Shape],
            keys: list[str], workers: int = 1) -> Estimate:
    """The estimate from the shapes' costs (measured or extrapolated): no timing here."""
    runs = []
    for spec, key in zip(plan, keys, strict=True):
        cfg, shape = spec.cfg, shapes[key]
        corpus = corpora[corpus_key(cfg.data)]
        t = cfg.train
        task = corpus.task is not None  # the target losses: one more pass over a split
        val = _eval_chars(corpus, "val", t.batch_size) * shape.eval_char_s
        test = _eval_chars(corpus, "test", t.batch_size) * shape.eval_char_s
        sample = (shape.sample_fixed_s + t.sample_chars * shape.sample_char_s
                  if t.sample_chars else 0.0)
        ups = updates_per_epoch(cfg, corpus)
        runs.append(RunEstimate(spec, shape, ups, t.epochs, ups * shape.update_s,
                                val * (2 if task else 1), sample,
                                test * (2 if task else 1) + (val if task else 0.0)))
    return Estimate(runs, list(shapes.values()), workers=max(1, workers))


def estimate(plan: list[RunSpec], corpora: dict[str, Corpus], device=None, steps: int = 5,
             progress: bool = True, seconds: float = 60.0, workers: int = 1) -> Estimate:
    """Calibrate the plan's shapes on this machine (`device`: each run's train.device when
    None) and add up its runs' time."""
    shapes, keys = shapes_of(plan, corpora, device)
    spent, capped = calibrate(list(shapes.values()), steps, seconds, progress) if shapes \
        else (0.0, False)
    est = project(plan, corpora, shapes, keys, workers)
    est.calibration_s, est.capped = spent, capped
    if shapes and hasattr(os, "getloadavg"):
        est.load = (os.getloadavg()[0], os.cpu_count() or 1)
    return est
