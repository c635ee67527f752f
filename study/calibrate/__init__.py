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

The modules, one concept each:

- study.calibrate.shapes: the plan's training shapes (Shape, shape_key, shapes_of) and their
  FLOPs;
- study.calibrate.measuring: timing a shape, fitting and extrapolating the costs of those not
  timed, and the capped calibration that does both (calibrate);
- study.calibrate.report: the estimate (RunEstimate, Estimate) and how it reads (duration);
- this one: adding up (updates_per_epoch, project) and estimate, which does it all.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from study import data
from study.calibrate.measuring import (
    COSTS,
    EVAL_CHUNK,
    PRIME,
    SAMPLED,
    _suspects,
    calibrate,
    extrapolate,
    fit,
    measure,
)
from study.calibrate.report import Estimate, RunEstimate, duration
from study.calibrate.shapes import (
    FREE_MODEL,
    FREE_TRAIN,
    Shape,
    forward_flops_per_char,
    run_device,
    shape_key,
    shapes_of,
)
from study.config import Config
from study.data import Corpus, corpus_key

if TYPE_CHECKING:
    from study.ablation import RunSpec

__all__ = ["COSTS", "EVAL_CHUNK", "FREE_MODEL", "FREE_TRAIN", "PRIME", "SAMPLED", "Estimate",
           "RunEstimate", "Shape", "_suspects", "calibrate", "duration", "estimate",
           "extrapolate", "fit", "forward_flops_per_char", "measure", "project", "run_device",
           "shape_key", "shapes_of", "updates_per_epoch"]


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
