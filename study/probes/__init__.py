"""Probes: Karpathy15's gate saturation and interpretable units, and the error flow
through time, computed for a trained model and logged to its run.

All read a fixed stretch of the validation split (probes.chars characters) in B parallel
streams with the state carried, leaving out each stream's first `warmup` steps.

- Saturation: per layer, gate and unit, the fraction of steps with the gate below `left`
  (left-saturated) and above `right` (right-saturated).
- Units: every unit's tanh(c) and h against every concept of study.probes.concepts: ROC-AUC for
  binary concepts (reported as max(AUC, 1 − AUC) with its sign), Spearman's ρ (ranked by
  |ρ|: a unit may track a concept monotonically but not linearly) and Pearson's r for
  continuous ones; traces of the best units drawn over the text.
- Error flow: the mean norm of dℓ_t/dh_(t−q) and dℓ_t/dc_(t−q) against the distance q,
  at initialisation and after training: the quantity behind the vanishing-gradient
  argument (Hochreiter 1991/97, Pascanu13).

Each probe runs under its own guard (`run_probes`): one that fails prints its traceback,
loses only its own outputs and is named in ProbeResult.failed; the others are still
computed, written and logged. The traces themselves are drawn by study.probes.traces.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from study.config import ProbesConfig
from study.engine.scan import record_state_grads
from study.model import CharLM
from study.probes.concepts import CONCEPTS, signals
from study.probes.traces import trace_html, write_traces  # noqa: F401 (trace_html: for study.inspect)

# ---------------------------------------------------------------------------------------
# reading a stretch of text


@dataclass
class Activations:
    text: str  # the stretch, in text order
    keep: np.ndarray  # (N,) bool: positions in the statistics (past each stream's warm-up)
    states: dict[tuple[int, str], np.ndarray]  # (layer, "c" | "h") -> (N, H) float16
    left: dict[tuple[int, str], np.ndarray]  # (layer, gate) -> (H,) fraction left-saturated
    right: dict[tuple[int, str], np.ndarray]


def gate_label(cell, name: str, gru_update: str) -> str:
    if name == "u" and gru_update == "charrnn":
        return "z (char-rnn: 1-u)"
    return name


@torch.no_grad()
def read(model: CharLM, ids: torch.Tensor, decode, cfg: ProbesConfig,
         chunk: int = 500) -> Activations:
    """Run the model over `ids` in cfg.streams streams and gather what the probes need.
    A stream shorter than the warm-up keeps its last step, so that any text but the empty
    one leaves something to score."""
    B = min(cfg.streams, max(1, len(ids) // (cfg.warmup + 10)))
    L = len(ids) // B
    warmup = max(0, min(cfg.warmup, L - 1))
    x = ids[:B * L].long().view(B, L).t().contiguous().to(next(model.parameters()).device)
    keep = np.zeros((B, L), bool)
    keep[:, warmup:] = True
    n_keep = keep[0].sum()
    states: dict[tuple[int, str], list] = {}
    left: dict[tuple[int, str], torch.Tensor] = {}
    right: dict[tuple[int, str], torch.Tensor] = {}
    was_training = model.training
    model.eval()
    state = None
    for start in range(0, L, chunk):
        inner, state = model.internals(x[start:start + chunk], state)
        lo = max(0, warmup - start)  # steps of this chunk past the warm-up
        for l in range(len(model.layers)):
            for kind, seq in (("c", inner.c[l]), ("h", inner.h[l])):
                if seq is not None:
                    vals = torch.tanh(seq) if kind == "c" else seq  # (T, B, H)
                    states.setdefault((l + 1, kind), []).append(
                        vals.permute(1, 0, 2).to(torch.float16).cpu().numpy())
            for name, g in inner.gates[l].items():
                if name == "u" and cfg.gru_update == "charrnn":
                    g = 1 - g
                key = (l + 1, gate_label(model.cell, name, cfg.gru_update))
                g = g[lo:]
                left[key] = left.get(key, 0) + (g < cfg.left).sum((0, 1)).double()
                right[key] = right.get(key, 0) + (g > cfg.right).sum((0, 1)).double()
    model.train(was_training)
    n = n_keep * B
    text = decode(ids[:B * L])
    return Activations(
        text=text, keep=keep.reshape(-1),
        states={k: np.concatenate(v, axis=1).reshape(B * L, -1) for k, v in states.items()},
        left={k: (v / n).cpu().numpy() for k, v in left.items()},
        right={k: (v / n).cpu().numpy() for k, v in right.items()})


# ---------------------------------------------------------------------------------------
# saturation


def saturation_table(acts: Activations) -> pd.DataFrame:
    rows = []
    for (layer, gate), lf in acts.left.items():
        rf = acts.right[(layer, gate)]
        for unit in range(len(lf)):
            rows.append({"layer": layer, "gate": gate, "unit": unit,
                         "frac_left": float(lf[unit]), "frac_right": float(rf[unit])})
    return pd.DataFrame(rows, columns=["layer", "gate", "unit", "frac_left", "frac_right"])


def saturation_metrics(table: pd.DataFrame) -> dict[str, float]:
    out = {}
    for (layer, gate), sub in table.groupby(["layer", "gate"]):
        key = f"sat.L{layer}.{gate.split(' ')[0]}"
        out[f"{key}.left_mean"] = float(sub["frac_left"].mean())
        out[f"{key}.right_mean"] = float(sub["frac_right"].mean())
        out[f"{key}.units_right_gt50pct"] = int((sub["frac_right"] > 0.5).sum())
        out[f"{key}.units_right_gt90pct"] = int((sub["frac_right"] > 0.9).sum())
    return out


# ---------------------------------------------------------------------------------------
# units against concepts


def auc(values: np.ndarray, positive: np.ndarray, ranks: np.ndarray | None = None):
    """ROC-AUC of each column of values (N, U) for the binary labels (N,), by ranks
    (Mann-Whitney U, ties averaged). Pass `ranks` (rankdata(values, axis=0)) when scoring
    many concepts: ranking is the expensive part."""
    pos = positive.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(values.shape[1], np.nan)
    if ranks is None:
        ranks = rankdata(values, axis=0)
    return (ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pearson(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    v = values - values.mean(0)
    t = target - target.mean()
    denom = np.sqrt((v * v).sum(0) * (t * t).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (v * t[:, None]).sum(0) / denom, np.nan)


UNIT_COLUMNS = ["layer", "state", "unit", "concept", "kind", "score", "sign", "auc",
                "pearson", "spearman"]


def unit_scores(acts: Activations, concept_names: list[str] | None = None) -> pd.DataFrame:
    """One row per (layer, state, unit, concept): the score and its sign (NaN and 0 where
    the stretch gives no score: a concept constant over it)."""
    sig = signals(acts.text, concept_names)
    keep = acts.keep
    rows = []
    for (layer, kind), vals in acts.states.items():
        v = vals[keep].astype(np.float32)  # (N, H)
        ranked = rankdata(v, axis=0)
        for name, s in sig.items():
            s = s[keep]
            c = CONCEPTS[name]
            if c.kind == "binary":
                a = auc(v, s, ranked)
                score, sign = np.maximum(a, 1 - a), np.where(a >= 0.5, 1, -1)
                extra = {"auc": a}
            else:  # ranked by |Spearman ρ|: a position cell may saturate (tanh), not be linear
                r = pearson(v, s)
                rho = pearson(ranked, rankdata(s))
                score, sign = np.abs(rho), np.sign(rho)
                extra = {"pearson": r, "spearman": rho}
            for unit in range(v.shape[1]):
                row = {"layer": layer, "state": kind, "unit": unit, "concept": name,
                       "kind": c.kind, "score": float(score[unit]), "sign": int(sign[unit])
                       if np.isfinite(score[unit]) else 0}
                row.update({k: float(x[unit]) for k, x in extra.items()})
                rows.append(row)
    return pd.DataFrame(rows, columns=UNIT_COLUMNS)


def best_units(scores: pd.DataFrame, top: int = 1) -> pd.DataFrame:
    ok = scores[np.isfinite(scores["score"].astype(float))]
    return (ok.sort_values("score", ascending=False).groupby("concept", sort=False)
            .head(top).sort_values(["concept", "score"], ascending=[True, False]))


def describe_unit(row) -> str:
    state = "tanh(c)" if row["state"] == "c" else "h"
    if row["kind"] == "binary":
        how = f"AUC {row['score']:.3f} ({'+' if row['sign'] > 0 else '−'})"
    else:
        how = f"ρ {row['spearman']:+.3f} (Pearson r {row['pearson']:+.3f})"
    return f"layer {row['layer']} {state}[{row['unit']}]: {how}"


# ---------------------------------------------------------------------------------------
# error flow


def error_flow(model: CharLM, ids: torch.Tensor, q_max: int, batch: int,
               warmup: int = 100) -> pd.DataFrame:
    """Mean over `batch` sequences of ‖dℓ_t/dh_(t−q)‖ and ‖dℓ_t/dc_(t−q)‖, q = 0..q_max, per
    layer: ℓ_t is the loss at the last step t of a window of q_max + 1 steps, entered with
    the state after `warmup` steps of text. A text too short for that gives the distances
    it has (q up to len(ids) − 2, with a shorter warm-up), none under two characters."""
    device = next(model.parameters()).device
    q_max = min(q_max, len(ids) - 2)
    if q_max < 0:
        return pd.DataFrame(columns=["layer", "state", "q", "grad_norm"])
    warmup = max(0, min(warmup, len(ids) - q_max - 2))
    span = warmup + q_max + 2
    starts = np.linspace(0, max(0, len(ids) - span - 1), batch).astype(int)
    seqs = torch.stack([ids[s:s + span].long() for s in starts], 1).to(device)  # (span, B)
    was_training = model.training
    model.eval()  # no dropout: the derivative of the model as it predicts
    state = None
    if warmup:
        with torch.no_grad():
            _, state, _ = model(seqs[:warmup])
    x, y = seqs[warmup:warmup + q_max + 1], seqs[warmup + q_max + 1]
    with torch.enable_grad(), record_state_grads() as rec:
        logits, _, _ = model(x, state)
        F.cross_entropy(logits[-1], y, reduction="sum").backward()  # ℓ per sequence
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    T = x.shape[0]
    rows = []
    for layer, (hs, cs) in enumerate(zip(rec.h, rec.c, strict=True), 1):
        for kind, rec_k in (("h", hs), ("c", cs)):
            for t, norms in rec_k.items():
                rows.append({"layer": layer, "state": kind, "q": T - 1 - t,
                             "grad_norm": float(norms.mean())})
    return pd.DataFrame(rows).sort_values(["layer", "state", "q"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# all of it, for one run


@dataclass
class ProbeResult:
    metrics: dict[str, float] = field(default_factory=dict)  # of the probes that succeeded
    failed: dict[str, str] = field(default_factory=dict)  # probe -> "ExcType: message"

    @property
    def ok(self) -> bool:
        return not self.failed


@contextmanager
def _guard(result: ProbeResult, name: str, out: Path | None = None):
    """Run one probe. It writes its files into the folder yielded (with `out`: a staging
    folder whose files move into `out` when the probe succeeds). A failure prints its
    traceback, drops the probe's files and is recorded in `result.failed`; it goes no
    further, so that the other probes still run."""
    stage = None
    if out is not None:
        stage = out.parent / f"{out.name}.{name}"
        stage.mkdir()
    try:
        yield stage
    except Exception as e:  # noqa: BLE001 (reported in result.failed, which callers check)
        print(f"probes: the {name} probe failed:", file=sys.stderr)
        traceback.print_exc()
        result.failed[name] = f"{type(e).__name__}: {e}"
    else:
        if stage is not None:
            for path in stage.iterdir():
                path.rename(out / path.name)
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def run_probes(model: CharLM, corpus, cfg: ProbesConfig, tracker, title: str,
               init_model: CharLM | Callable[[], CharLM] | None = None,
               step: int | None = None, full: bool = True) -> ProbeResult:
    """Probe `model` on the validation split and log to `tracker`: the saturation, units,
    traces and error-flow probes, each under its own guard (the traces need the units'
    scores: when those fail, no traces are drawn). full=False computes and logs only the
    saturation and unit metrics (for the every-N-epochs probes). `init_model` (or a function
    that builds it, called only when the error flow is measured) adds the error flow at
    initialisation. Returns the metrics of the probes that succeeded and the failures."""
    t0 = time.perf_counter()
    res = ProbeResult()
    ids = corpus.splits["val"][:cfg.chars]
    with _guard(res, "read"):
        acts = read(model, ids, corpus.decode, cfg)
    if not res.ok:  # nothing to probe
        return res
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probes"
        out.mkdir()
        stage = out if full else None
        with _guard(res, "saturation", stage) as folder:
            sat = saturation_table(acts)
            metrics = saturation_metrics(sat)
            if full:
                sat.to_csv(folder / "saturation.csv", index=False)
                _saturation_figure(model, sat, cfg, title, folder)
            res.metrics.update(metrics)
        scores, tags = None, {}
        with _guard(res, "units", stage) as folder:
            scores = unit_scores(acts, cfg.concepts or None)
            best = best_units(scores, 1)
            metrics, found = {}, {}
            for _, row in best.iterrows():
                key = f"unit.{row['concept']}"
                metrics[f"{key}.score"] = row["score"]
                metrics[f"{key}.layer"] = row["layer"]
                metrics[f"{key}.unit"] = row["unit"]
                found[key] = describe_unit(row)
            if full:
                scores.to_csv(folder / "unit_scores.csv", index=False)
                best.to_csv(folder / "best_units.csv", index=False)
            res.metrics.update(metrics)
            tags = found
        if not full:
            tracker.log_metrics(res.metrics, step=step)
            return res
        if "units" not in res.failed:
            with _guard(res, "traces", out) as folder:
                write_traces(acts, scores, folder / "traces", cfg, title)
        if cfg.error_flow:
            with _guard(res, "error_flow", out) as folder:
                if init_model is not None and not isinstance(init_model, torch.nn.Module):
                    init_model = init_model()
                _error_flow_probe(model, init_model, ids, cfg, title, tracker, folder)
        tracker.log_artifacts(out, "probes")
    res.metrics["probe_seconds"] = time.perf_counter() - t0
    tracker.log_metrics(res.metrics)
    tracker.set_tags(tags)
    print(f"probes: {len(acts.text):,} val chars, {res.metrics['probe_seconds']:.1f} s; "
          + "; ".join(f"{k.split('.')[1]} {v}" for k, v in sorted(tags.items()))
          + "".join(f"; FAILED {k}: {v}" for k, v in res.failed.items()), file=sys.stderr)
    return res


def _saturation_figure(model, sat: pd.DataFrame, cfg: ProbesConfig, title: str, folder: Path):
    from study.probes import figures

    note = ""
    if getattr(model.cell, "discrete_gates", False):
        note = "binary gates are 0 or 1 by construction: every unit lies on the diagonal"
    if cfg.gru_update == "pytorch" and "u" in set(sat["gate"]):
        note = "GRU update gate u in PyTorch's convention, h = (1-u)·n + u·h'"
    if len(sat):
        fig = figures.saturation_scatter(sat, f"{title}: gate saturation", cfg.left,
                                         cfg.right, note)
        fig.savefig(folder / "saturation.png", dpi=120)
        figures.plt.close(fig)


def _error_flow_probe(model, init_model, ids, cfg: ProbesConfig, title: str, tracker,
                      folder: Path) -> None:
    from study.probes import figures

    flow = error_flow(model, ids, cfg.error_flow_q, cfg.error_flow_batch)
    flow["when"] = "trained"
    if init_model is not None:
        f0 = error_flow(init_model, ids, cfg.error_flow_q, cfg.error_flow_batch)
        f0["when"] = "init"
        flow = pd.concat([f0, flow], ignore_index=True)
    flow.to_csv(folder / "error_flow.csv", index=False)
    if len(flow):
        fig = figures.error_flow_plot(flow, f"{title}: error flow")
        fig.savefig(folder / "error_flow.png", dpi=120)
        figures.plt.close(fig)
    tracker.log_series([
        (f"{'errflow' if r.when == 'trained' else 'errflow_init'}.{r.state}.L{r.layer}",
         r.grad_norm, r.q) for r in flow.itertuples()])


def probe_trained(model: CharLM, corpus, cfg, tracker, device, step: int | None = None,
                  full: bool = True) -> ProbeResult:
    """The probes of a run (cfg: its whole Config), the initial model for the error flow
    rebuilt from the seed. A probe that fails is named in the result's `failed` (its
    traceback on stderr) and loses only its own outputs; what that means for the run is
    the caller's to decide."""
    from study.train import seed_everything

    def initial_model() -> CharLM:  # the same initial weights, rebuilt from the seed
        seed_everything(cfg.train.seed)
        return CharLM(corpus.vocab_size, cfg.model).to(device)

    title = f"{cfg.model.cell} on {corpus.name}"
    return run_probes(model, corpus, cfg.probes, tracker, title,
                      init_model=initial_model if full and cfg.probes.error_flow else None,
                      step=step, full=full)


def summary(metrics: dict) -> str:
    keys = sorted(k for k in metrics if k.startswith("unit.") and k.endswith(".score"))
    return ", ".join(f"{k.split('.')[1]} {metrics[k]:.2f}" for k in keys
                     if not math.isnan(metrics[k]))
