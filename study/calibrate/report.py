"""The estimate and how it reads: RunEstimate (one run's time, in its parts), Estimate
(the plan's runs, the shapes they were costed from, the total, and its lines, summary and
notes for `--dry-run`) and duration (seconds in the unit that reads best)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

import torch

from study.calibrate.shapes import Shape

if TYPE_CHECKING:
    from study.ablation import RunSpec


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
