"""Probes: what a trained model does with text, as a function of (model, text) -> tables
and figures. Nothing here logs: run_probes returns a ProbeResult (metrics, tags,
failures) and writes its files into a folder; the caller logs them where it wants.

All read a fixed stretch of the validation split (probes.chars characters) in B parallel
streams with the state carried, leaving out each stream's first `warmup` steps
(study.probes.activations). The probes, each in its own module:

- saturation (Karpathy15 Fig. 3): study.probes.saturation
- units against the concepts of study.probes.concepts: study.probes.units, their traces
  drawn over the text: study.probes.traces
- error flow through time: study.probes.flow
- every figure: study.probes.figures

This module owns ProbeResult, the per-probe guard and run_probes: each probe runs under its
own guard; one that fails prints its traceback, loses only its own outputs and is named in
ProbeResult.failed; the others are still computed and written.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from study.config import ProbesConfig
from study.model import CharLM
from study.probes import activations, flow, saturation, traces, units
from study.probes.activations import Activations, gate_label, read
from study.probes.flow import error_flow
from study.probes.saturation import saturation_metrics, saturation_table
from study.probes.traces import trace_html, write_traces
from study.probes.units import UNIT_COLUMNS, auc, best_units, describe_unit, pearson, unit_scores

__all__ = ["Activations", "ProbeResult", "UNIT_COLUMNS", "auc", "best_units",
           "describe_unit", "error_flow", "gate_label", "pearson", "read", "run_probes",
           "saturation_metrics", "saturation_table", "trace_html", "unit_scores",
           "write_traces"]


@dataclass
class ProbeResult:
    """What the probes of one model found, for the caller to log. Only probes that
    succeeded contribute."""

    # sat.*, unit.<concept>.score; full only: errflow[_init].*.log_decay_per_step and
    # probe_seconds
    metrics: dict[str, float] = field(default_factory=dict)
    # unit.<concept> -> its best unit described (full only)
    tags: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # probe -> "ExcType: message"

    @property
    def ok(self) -> bool:
        return not self.failed


@contextmanager
def _guard(result: ProbeResult, name: str, out: Path | None = None):
    """Run one probe. It writes its files into the folder yielded (with `out`: a staging
    folder whose files move into `out`, replacing those of the same name, when the probe
    succeeds). A failure prints its traceback, drops the probe's files and is recorded in
    `result.failed`; it goes no further, so that the other probes still run."""
    stage = None
    if out is not None:  # beside `out`, on its file system, so that the files can move
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{name}.", dir=out.parent))
    try:
        yield stage
    except Exception as e:  # noqa: BLE001 (reported in result.failed, which callers check)
        print(f"probes: the {name} probe failed:", file=sys.stderr)
        traceback.print_exc()
        result.failed[name] = f"{type(e).__name__}: {e}"
    else:
        if stage is not None:
            for path in stage.iterdir():
                _replace(path, out / path.name)
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def _replace(path: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    path.rename(target)


def run_probes(model: CharLM, corpus, cfg: ProbesConfig, out: Path | None, title: str,
               init_model: CharLM | Callable[[], CharLM] | None = None,
               full: bool = True) -> ProbeResult:
    """Probe `model` on the validation split of `corpus`: the saturation, units, traces and
    error-flow probes, each under its own guard (the traces need the units' scores: when
    those fail, no traces are drawn), their files written into `out` (created if missing).
    full=False computes only the saturation and unit metrics and writes nothing (for the
    every-N-epochs probes; `out` may be None). `init_model` (or a function that builds it,
    called only when the error flow is measured) adds the error flow at initialisation."""
    t0 = time.perf_counter()
    if full and out is None:
        raise ValueError("run_probes: full=True writes the probes' files and needs `out`")
    res = ProbeResult()
    ids = corpus.splits["val"][:cfg.chars]
    with _guard(res, "read"):
        acts = activations.read(model, ids, corpus.decode, cfg)
    if not res.ok:  # nothing to probe
        return res
    stage = Path(out) if full else None
    if stage is not None:
        stage.mkdir(parents=True, exist_ok=True)
    with _guard(res, "saturation", stage) as folder:
        res.metrics.update(saturation.saturation_probe(model, acts, cfg, title, folder))
    scores, tags = None, {}
    with _guard(res, "units", stage) as folder:
        metrics, found, scores = units.units_probe(acts, cfg, folder)
        res.metrics.update(metrics)
        tags = found
    if stage is None:
        return res
    if "units" not in res.failed:
        with _guard(res, "traces", stage) as folder:
            traces.write_traces(acts, scores, folder / "traces", cfg, title)
    if cfg.error_flow:
        with _guard(res, "error_flow", stage) as folder:
            res.metrics.update(flow.error_flow_probe(model, init_model, ids, cfg, title,
                                                     folder))
    res.metrics["probe_seconds"] = time.perf_counter() - t0
    res.tags = tags
    print(f"probes: {len(acts.text):,} val chars, {res.metrics['probe_seconds']:.1f} s; "
          + "; ".join(f"{k.split('.')[1]} {v}" for k, v in sorted(tags.items()))
          + "".join(f"; FAILED {k}: {v}" for k, v in res.failed.items()), file=sys.stderr)
    return res
