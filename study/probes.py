"""Probes: Karpathy15's gate saturation and interpretable units, and the error flow
through time, computed for a trained model and logged to its run.

All read a fixed stretch of the validation split (probes.chars characters) in B parallel
streams with the state carried, leaving out each stream's first `warmup` steps.

- Saturation: per layer, gate and unit, the fraction of steps with the gate below `left`
  (left-saturated) and above `right` (right-saturated).
- Units: every unit's tanh(c) and h against every concept of study.concepts: ROC-AUC for
  binary concepts (reported as max(AUC, 1 − AUC) with its sign), Spearman's ρ (ranked by
  |ρ|: a unit may track a concept monotonically but not linearly) and Pearson's r for
  continuous ones; traces of the best units drawn over the text.
- Error flow: the mean norm of dℓ_t/dh_(t−q) and dℓ_t/dc_(t−q) against the distance q,
  at initialisation and after training: the quantity behind the vanishing-gradient
  argument (Hochreiter 1991/97, Pascanu13).
"""

from __future__ import annotations

import html
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from study.concepts import CONCEPTS, signals
from study.config import ProbesConfig
from study.model import CharLM
from study.scan import record_state_grads

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
    """Run the model over `ids` in cfg.streams streams and gather what the probes need."""
    B = min(cfg.streams, max(1, len(ids) // (cfg.warmup + 10)))
    L = len(ids) // B
    x = ids[:B * L].long().view(B, L).t().contiguous().to(next(model.parameters()).device)
    keep = np.zeros((B, L), bool)
    keep[:, min(cfg.warmup, L - 1):] = True
    n_keep = keep[0].sum()
    states: dict[tuple[int, str], list] = {}
    left: dict[tuple[int, str], torch.Tensor] = {}
    right: dict[tuple[int, str], torch.Tensor] = {}
    was_training = model.training
    model.eval()
    state = None
    for start in range(0, L, chunk):
        inner, state = model.internals(x[start:start + chunk], state)
        lo = max(0, min(cfg.warmup, L) - start)  # steps of this chunk past the warm-up
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


def unit_scores(acts: Activations, concept_names: list[str] | None = None) -> pd.DataFrame:
    """One row per (layer, state, unit, concept): the score and its sign."""
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
    return pd.DataFrame(rows)


def best_units(scores: pd.DataFrame, top: int = 1) -> pd.DataFrame:
    ok = scores[np.isfinite(scores["score"])]
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
# traces


def excerpt(signal: np.ndarray, keep: np.ndarray, length: int) -> slice:
    """The window of `length` characters (past the warm-up) where the concept varies most."""
    n = len(signal)
    if n <= length:
        return slice(0, n)
    s = np.where(keep, signal, signal[keep].mean() if keep.any() else 0).astype(np.float64)
    c1, c2 = np.concatenate([[0], np.cumsum(s)]), np.concatenate([[0], np.cumsum(s * s)])
    starts = np.arange(0, n - length + 1, max(1, length // 10))
    mean = (c1[starts + length] - c1[starts]) / length
    var = (c2[starts + length] - c2[starts]) / length - mean ** 2
    var = np.where(keep[starts], var, -1)
    best = int(starts[np.argmax(var)])
    return slice(best, best + length)


def _css(v: float) -> str:
    v = max(-1.0, min(1.0, float(v)))
    a = int(255 * (1 - abs(v)))
    return f"rgb(255,{a},{a})" if v < 0 else f"rgb({a},{a},255)"


def trace_html(text: str, values: np.ndarray, title: str, subtitle: str = "") -> str:
    """A self-contained page: each character on a background from red (−1) through white
    to blue (+1), its value on hover."""
    spans = []
    for ch, v in zip(text, values, strict=True):
        if ch == "\r":
            continue
        shown = "↵\n" if ch == "\n" else html.escape(ch)
        spans.append(f'<span style="background:{_css(v)}" title="{float(v):+.2f}">'
                     f"{shown}</span>")
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:1.5em;max-width:60em}"
            ".t{font-family:monospace;white-space:pre-wrap;line-height:1.45;font-size:13px}"
            ".k span{display:inline-block;width:2.2em;text-align:center;font-size:11px}"
            "</style></head><body>"
            f"<h3>{html.escape(title)}</h3><p>{html.escape(subtitle)}</p>"
            "<p class='k'>value: " + "".join(
                f"<span style='background:{_css(v)}'>{v:+.1f}</span>"
                for v in (-1, -0.5, 0, 0.5, 1)) + "</p>"
            f"<div class='t'>{''.join(spans)}</div></body></html>")


def write_traces(acts: Activations, scores: pd.DataFrame, out: Path, cfg: ProbesConfig,
                 title: str, png: bool = True) -> list[dict]:
    """HTML (and PNG for each concept's best unit) traces, and an index.html."""
    from study import figures

    out.mkdir(parents=True, exist_ok=True)
    sig = signals(acts.text, sorted(set(scores["concept"])))
    links = []
    for concept, sub in best_units(scores, cfg.top_units).groupby("concept", sort=True):
        window = excerpt(sig[concept], acts.keep, cfg.trace_chars)
        text = acts.text[window]
        for rank, (_, row) in enumerate(sub.iterrows(), 1):
            vals = acts.states[(row["layer"], row["state"])][window, row["unit"]]
            vals = vals.astype(np.float32)
            # named by rank, not unit, so that probing again replaces the files
            name = f"{concept}_{rank}"
            label = describe_unit(row)
            (out / f"{name}.html").write_text(trace_html(
                text, vals, f"{concept}: {label}",
                f"{title}. {CONCEPTS[concept].about}. Characters {window.start}–{window.stop} "
                f"of the probed validation text."), encoding="utf-8")
            entry = {"concept": concept, "rank": rank, "unit": label, "html": f"{name}.html"}
            if png and rank == 1:
                fig = figures.trace_png(text[:600], vals[:600], f"{concept}: {label}")
                fig.savefig(out / f"{name}.png", dpi=110)
                figures.plt.close(fig)
                entry["png"] = f"{name}.png"
            links.append(entry)
    items = "".join(
        f"<li><b>{html.escape(e['concept'])}</b> #{e['rank']}: "
        f"<a href='{e['html']}'>{html.escape(e['unit'])}</a>"
        + (f" (<a href='{e['png']}'>png</a>)" if "png" in e else "") + "</li>" for e in links)
    (out / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>units</title></head><body>"
        f"<h3>{html.escape(title)}: the best units per concept</h3><ul>{items}</ul>"
        "<p>AUC: ROC-AUC of the unit for the binary concept, max(AUC, 1 − AUC), sign (+) "
        "when the unit is higher inside; ρ: Spearman's rank correlation (units ranked by "
        "|ρ|), r: Pearson's.</p></body></html>",
        encoding="utf-8")
    return links


# ---------------------------------------------------------------------------------------
# error flow


def error_flow(model: CharLM, ids: torch.Tensor, q_max: int, batch: int,
               warmup: int = 100) -> pd.DataFrame:
    """Mean over `batch` sequences of ‖dℓ_t/dh_(t−q)‖ and ‖dℓ_t/dc_(t−q)‖, q = 0..q_max, per
    layer: ℓ_t is the loss at the last step t of a window of q_max + 1 steps, entered with
    the state after `warmup` steps of text."""
    device = next(model.parameters()).device
    span = warmup + q_max + 2
    starts = np.linspace(0, max(0, len(ids) - span - 1), batch).astype(int)
    seqs = torch.stack([ids[s:s + span].long() for s in starts], 1).to(device)  # (span, B)
    was_training = model.training
    model.eval()  # no dropout: the derivative of the model as it predicts
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


def run_probes(model: CharLM, corpus, cfg: ProbesConfig, tracker, title: str,
               init_model: CharLM | None = None, step: int | None = None,
               full: bool = True) -> dict:
    """Probe `model` on the validation split and log to `tracker`. full=False logs only the
    summary metrics (for the every-N-epochs probes). Returns the summary metrics."""
    t0 = time.perf_counter()
    ids = corpus.splits["val"][:cfg.chars]
    acts = read(model, ids, corpus.decode, cfg)
    sat = saturation_table(acts)
    scores = unit_scores(acts, cfg.concepts or None)
    metrics = saturation_metrics(sat)
    best = best_units(scores, 1)
    tags = {}
    for _, row in best.iterrows():
        key = f"unit.{row['concept']}"
        metrics[f"{key}.score"] = row["score"]
        metrics[f"{key}.layer"] = row["layer"]
        metrics[f"{key}.unit"] = row["unit"]
        tags[key] = describe_unit(row)
    if not full:
        tracker.log_metrics(metrics, step=step)
        return metrics
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probes"
        out.mkdir()
        sat.to_csv(out / "saturation.csv", index=False)
        scores.to_csv(out / "unit_scores.csv", index=False)
        best.to_csv(out / "best_units.csv", index=False)
        from study import figures

        binary = "binary" in type(model.cell).__name__.lower()
        note = "binary gates are 0 or 1 by construction: every unit lies on the diagonal" \
            if binary else ""
        if cfg.gru_update == "pytorch" and "u" in set(sat["gate"]):
            note = "GRU update gate u in PyTorch's convention, h = (1-u)·n + u·h'"
        if len(sat):
            fig = figures.saturation_scatter(sat, f"{title}: gate saturation", cfg.left,
                                             cfg.right, note)
            fig.savefig(out / "saturation.png", dpi=120)
            figures.plt.close(fig)
        write_traces(acts, scores, out / "traces", cfg, title)
        if cfg.error_flow:
            flow = error_flow(model, ids, cfg.error_flow_q, cfg.error_flow_batch)
            flow["when"] = "trained"
            if init_model is not None:
                f0 = error_flow(init_model, ids, cfg.error_flow_q, cfg.error_flow_batch)
                f0["when"] = "init"
                flow = pd.concat([f0, flow], ignore_index=True)
            flow.to_csv(out / "error_flow.csv", index=False)
            fig = figures.error_flow_plot(flow, f"{title}: error flow")
            fig.savefig(out / "error_flow.png", dpi=120)
            figures.plt.close(fig)
            tracker.log_series([
                (f"{'errflow' if r.when == 'trained' else 'errflow_init'}.{r.state}.L{r.layer}",
                 r.grad_norm, r.q) for r in flow.itertuples()])
        tracker.log_artifacts(out, "probes")
    metrics["probe_seconds"] = time.perf_counter() - t0
    tracker.log_metrics(metrics)
    tracker.set_tags(tags)
    print(f"probes: {len(acts.text):,} val chars, {metrics['probe_seconds']:.1f} s; "
          + "; ".join(f"{k.split('.')[1]} {v}" for k, v in sorted(tags.items())),
          file=sys.stderr)
    return metrics


def probe_trained(model: CharLM, corpus, cfg, tracker, device, step: int | None = None,
                  full: bool = True) -> dict:
    """The probes of a run (cfg: its whole Config), the initial model for the error flow
    rebuilt from the seed. A failure is reported on the run, never allowed to lose it."""
    from study.train import seed_everything

    title = f"{cfg.model.cell} on {corpus.name}"
    init = None
    if full and cfg.probes.error_flow:  # the same initial weights, rebuilt from the seed
        seed_everything(cfg.train.seed)
        init = CharLM(corpus.vocab_size, cfg.model).to(device)
    try:
        return run_probes(model, corpus, cfg.probes, tracker, title, init_model=init,
                          step=step, full=full)
    except Exception as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        tracker.set_tags({"probe_error": f"{type(e).__name__}: {e}"[:5000]})
        return {}


def summary(metrics: dict) -> str:
    keys = sorted(k for k in metrics if k.startswith("unit.") and k.endswith(".score"))
    return ", ".join(f"{k.split('.')[1]} {metrics[k]:.2f}" for k in keys
                     if not math.isnan(metrics[k]))
