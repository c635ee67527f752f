"""The claims table: each published claim (analyses/published.yaml) with our evidence and a
verdict — reproduced, not reproduced, too small to judge, or not run — computed from the
runs with the threshold stated beside it, never written by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analyses import saturation
from analyses.common import Section
from analyses.error_claims import CHECKS as ERROR_CHECKS
from analyses.error_claims import behind_errors
from analyses.error_flow import decay_rate
from analyses.runs import Runs
from analyses.seeds import ALPHA, MARGIN, UNIT, losses_by_seed, lower, mean_sd, rules, width
from analyses.sweep_claims import (
    c_bptt_50,
    c_clip_prevents_divergence,
    c_clipping,
    c_lr,
    c_too_short_bptt,
    trials,
)
from analyses.table1 import published
from analyses.verdicts import NOT, NOT_RUN, REPRODUCED, TOO_SMALL
from study.engine.cells import variants

# The least the runs behind a claim must have had for its verdict to count. Every claim is
# about trained character models; a run below any of these (the smoke config: 2 epochs of
# 20,000 characters at width 32, ending near 3-3.7 nats/char) has barely left the unigram
# stage, so its loss differences, gates and units say how fast a cell starts, not what it
# learns. Such a claim gets TOO_SMALL, with the verdict the check would give beside it.
MIN_EPOCHS = 5  # configs/ablation.yaml's CPU budget, chosen there as the fewest epochs of a
#                 full corpus that give the cells enough updates to differ (its 2×128 runs
#                 end at 1.3-2.0 nats/char; 2 smoke epochs end above 3)
MIN_WIDTH = 64  # Karpathy15's narrowest Table 1 row; Greff15's networks were wider still
MIN_CORPUS_CHARS = 1_000_000  # a corpus cut by data.max_chars below this is a slice (War
#                 and Peace has 3.2M characters, the Linux corpus 6.2M), not the corpus


def _test_by(runs: Runs) -> pd.DataFrame:
    """One row per (dataset, variant, seed): the test loss in nats/char (analyses.seeds)."""
    return losses_by_seed(runs.train)[0]


def _losses(d: pd.DataFrame, names) -> str:
    return ", ".join(f"{v} {mean_sd(d[d.variant == v].test)}" for v in names)


def c_lstm_gru_beat_rnn(runs, df):
    rows, ok, verdicts = [], [], []
    for dataset, d in df.groupby("dataset") if len(df) else []:
        t = {v: d[d.variant == v].test for v in ("rnn", "lstm", "gru")}
        if any(len(x) == 0 for x in t.values()):
            continue
        vs = [lower(t["lstm"], t["rnn"]), lower(t["gru"], t["rnn"])]
        verdicts += vs
        rows.append(f"{dataset}, {UNIT}: {_losses(d, ('rnn', 'lstm', 'gru'))}"
                    + _p_text(("lstm vs rnn", "gru vs rnn"), vs))
        ok.append(all(v.lower for v in vs))
    if not ok:
        return NOT_RUN, "needs rnn, lstm and gru runs on one corpus (configs/ablation.yaml)"
    return (REPRODUCED if all(ok) else NOT), "; ".join(rows) + f" ({rules(verdicts)})"


def _p_text(names, verdicts) -> str:
    """' (Welch p: lstm vs rnn 0.003, gru vs rnn 0.04)' where a test was run."""
    ps = [f"{n} {v.p:.3g}" for n, v in zip(names, verdicts, strict=True) if v.p == v.p]
    return f" (Welch p: {', '.join(ps)})" if ps else ""


def c_no_variant_beats_baseline(runs, df):
    rows, beat, verdicts = [], [], []
    for dataset, d in df.groupby("dataset") if len(df) else []:
        base = d[d.variant == "peephole"].test
        others = [v for v in variants("lstm") if v != "peephole" and v in set(d.variant)]
        if len(base) == 0 or not others:
            continue
        vs = {v: lower(d[d.variant == v].test, base) for v in others}
        verdicts += vs.values()
        better = [v for v, r in vs.items() if r.lower]
        beat += better
        rows.append(f"{dataset}, {UNIT}: baseline peephole {mean_sd(base)}, "
                    f"{_losses(d, others)}; clearly better: {', '.join(better) or 'none'}"
                    + _p_text(tuple(f"{v} vs peephole" for v in others), list(vs.values())))
    if not rows:
        return NOT_RUN, "needs the peephole baseline and other LSTM variants"
    return (NOT if beat else REPRODUCED), "; ".join(rows) + f" ({rules(verdicts)})"


def c_nfg_noaf_hurt_most(runs, df):
    rows, ok = [], []
    for dataset, d in df.groupby("dataset") if len(df) else []:
        fam = d[d.variant.isin(variants("lstm"))].groupby("variant").test.mean().sort_values()
        named = [v for v in ("nfg", "noaf") if v in fam.index]
        if len(fam) < 3 or not named:
            continue
        worst = list(fam.index[-len(named):])
        ok.append(set(worst) == set(named))
        rows.append(f"{dataset}, {UNIT}: worst {_losses(d, worst)} of {len(fam)} LSTM "
                    "variants (by the mean over seeds)")
    if not ok:
        return NOT_RUN, "needs nfg (or noaf) and at least two other LSTM variants"
    return (REPRODUCED if all(ok) else NOT), "; ".join(rows)


def c_np_costs_nothing(runs, df):
    rows, ok, verdicts = [], [], []
    for dataset, d in df.groupby("dataset") if len(df) else []:
        a, b = d[d.variant == "lstm"].test, d[d.variant == "peephole"].test
        if len(a) == 0 or len(b) == 0:
            continue
        v = lower(b, a)
        verdicts.append(v)
        ok.append(not v.lower)  # the peepholes do not clearly help
        rows.append(f"{dataset}, {UNIT}: lstm (no peepholes) {mean_sd(a)} vs peephole "
                    f"{mean_sd(b)}" + _p_text(("peephole vs lstm",), [v]))
    if not ok:
        return NOT_RUN, "needs lstm and peephole runs"
    return (REPRODUCED if all(ok) else NOT), "; ".join(rows) + f" ({rules(verdicts)})"


def _saturation(runs, df, families=("lstm",)):
    """The saturation tables of the runs (every seed) of the variant the saturation figure
    shows for each family and corpus (analyses.saturation.shown)."""
    out = []
    for dataset in sorted(df.dataset.unique()) if len(df) else []:
        for family in families:
            row, _ = saturation.shown(runs, family, dataset)
            if row is None:
                continue
            chosen = df[(df.dataset == dataset) & (df.variant == row["tag.variant"])]
            for _, r in chosen.iterrows():
                t = runs.csv(r.run_id, "probes/saturation.csv")
                if t is not None and len(t):
                    out.append((r, t))
    return out


def _who(r) -> str:
    return f"{r.dataset} {r.variant} seed {r.seed}"


def c_forget_right(runs, df):
    found = _saturation(runs, df)
    if not found:
        return NOT_RUN, "needs lstm/peephole runs with probes"
    rows = [f"{_who(r)}: {int(((t.gate == 'f') & (t.frac_right > 0.9)).sum())} "
            "forget units open > 90% of the time" for r, t in found]
    ok = any(((t.gate == "f") & (t.frac_right > 0.9)).any() for _, t in found)
    return (REPRODUCED if ok else NOT), "; ".join(rows)


def c_output_not_saturated(runs, df):
    found = _saturation(runs, df)
    if not found:
        return NOT_RUN, "needs lstm/peephole runs with probes"
    rows, ok = [], True
    for r, t in found:
        o = t[t.gate == "o"]
        n = int(((o.frac_right > 0.9) | (o.frac_left > 0.9)).sum())
        ok &= n == 0
        rows.append(f"{_who(r)}: {n} output units saturated > 90% of the time")
    return (REPRODUCED if ok else NOT), "; ".join(rows)


def c_first_layer_diffuse(runs, df):
    found = _saturation(runs, df, ("lstm", "gru"))
    rows, ok = [], []
    for r, t in found:
        if t.layer.nunique() < 2:
            continue
        sat = (t.frac_left + t.frac_right).groupby(t.layer).mean()
        ok.append(sat.iloc[0] < sat.iloc[-1])
        rows.append(f"{_who(r)}: mean saturated fraction by layer "
                    + ", ".join(f"L{i} {v:.2f}" for i, v in sat.items()))
    if not ok:
        return NOT_RUN, "needs multi-layer lstm/gru runs with probes"
    return (REPRODUCED if all(ok) else NOT), "; ".join(rows)


def _best_unit(runs, dataset, concepts):
    """The best unit for these concepts over every finished LSTM-family run on a corpus."""
    best, train = None, runs.train
    lstms = train[(train["tag.dataset"] == dataset) & train["tag.variant"].isin(
        variants("lstm"))] if len(train) else train
    for _, r in lstms.iterrows():
        t = runs.csv(r.run_id, "probes/best_units.csv")
        if t is None:
            continue
        t = t[t.concept.isin(concepts)]
        for _, u in t.iterrows():
            if best is None or u.score > best[1].score:
                best = (r, u)
    return best


def _unit_claim(runs, df, dataset, concepts, threshold, measure):
    best = _best_unit(runs, dataset, concepts)
    if best is None:
        return NOT_RUN, f"needs {dataset} LSTM-family runs with probes"
    r, u = best
    text = (f"best: {r['tag.variant']} seed {r.get('tag.seed', '?')}, layer {u.layer} "
            f"{u.state}[{u.unit}], {u.concept} {measure} {u.score:.3f} (threshold "
            f"{threshold}); {int(r['param.model.num_layers'])}×"
            f"{int(r['param.model.hidden_size'])}")
    return (REPRODUCED if u.score >= threshold else NOT), text


def c_error_flow(runs, df):
    rows, ok = [], []
    for dataset, d in df.groupby("dataset") if len(df) else []:
        rates = {}
        for v in ("rnn", "lstm"):
            found = []
            for run_id in d[d.variant == v].run_id:
                f = runs.csv(run_id, "probes/error_flow.csv")
                if f is not None and len(f):
                    f = f[(f.when == "trained") & (f.state == "h") & (f.layer == f.layer.max())]
                    found.append(decay_rate(f))
            if found:
                rates[v] = pd.Series(found, dtype=float)
        if len(rates) == 2:
            ok.append(rates["rnn"].mean() < rates["lstm"].mean())
            rows.append(f"{dataset}: change of log ‖dℓ_t/dh_(t−q)‖ per step q (top layer, "
                        f"trained), rnn {_rate(rates['rnn'])} vs lstm {_rate(rates['lstm'])}")
    if not ok:
        return NOT_RUN, "needs rnn and lstm runs with probes"
    return (REPRODUCED if all(ok) else NOT), "; ".join(rows)


def _rate(r: pd.Series) -> str:
    return f"{r.mean():.4f}" + (f" (mean of {len(r)} seeds)" if len(r) > 1 else "")


_UNIT_CLAIMS = {"quote_cell": ("warpeace", ["in_quotes"]),
                "line_cell": ("warpeace", ["line_position"]),
                "code_cell": ("linux", ["in_comment", "in_string"])}

CHECKS = {
    "lstm_gru_beat_rnn": c_lstm_gru_beat_rnn,
    "no_variant_beats_baseline": c_no_variant_beats_baseline,
    "nfg_noaf_hurt_most": c_nfg_noaf_hurt_most,
    "np_costs_nothing": c_np_costs_nothing,
    "forget_gates_right_saturated": c_forget_right,
    "output_gates_not_saturated": c_output_not_saturated,
    "first_layer_diffuse": c_first_layer_diffuse,
    "quote_cell": lambda r, d: _unit_claim(r, d, *_UNIT_CLAIMS["quote_cell"], 0.9, "AUC"),
    "line_cell": lambda r, d: _unit_claim(r, d, *_UNIT_CLAIMS["line_cell"], 0.8, "|ρ|"),
    "code_cell": lambda r, d: _unit_claim(r, d, *_UNIT_CLAIMS["code_cell"], 0.9, "AUC"),
    "error_flow_rnn_vanishes": c_error_flow,
    "bptt_50_costs_little": c_bptt_50,
    "clipping_needed": c_clipping,
    "too_short_bptt_hurts": c_too_short_bptt,
    "clipping_prevents_divergence": c_clip_prevents_divergence,
    "lr_most_important": c_lr,
    **ERROR_CHECKS,  # lstm_beats_20gram, lstm_gain_long_range (Karpathy15's error analysis)
}


# the runs behind each claim ------------------------------------------------------------

_LOSS_VARIANTS = {"lstm_gru_beat_rnn": ("rnn", "lstm", "gru"),
                  "np_costs_nothing": ("lstm", "peephole"),
                  "error_flow_rnn_vanishes": ("rnn", "lstm")}


def _train_rows(runs, run_ids) -> pd.DataFrame:
    train = runs.train
    return train[train.run_id.isin(list(run_ids))] if len(train) else train


def behind(claim_id: str, runs, df: pd.DataFrame) -> pd.DataFrame:
    """The runs (rows of runs.train, or runs.studies for the sweep claims) a claim's check
    draws its verdict from."""
    if claim_id in ERROR_CHECKS:
        return behind_errors(claim_id, runs)
    if claim_id in ("bptt_50_costs_little", "clipping_needed", "lr_most_important"):
        return pd.DataFrame([s for s, _ in trials(runs)])
    if claim_id in ("too_short_bptt_hurts", "clipping_prevents_divergence"):
        # training procedures compared within one study at one budget (and long-lag runs
        # on a synthetic task): the sizes for judging what a cell learns do not apply; the
        # evidence states each study's k1, epochs and lr
        return pd.DataFrame()
    if claim_id in ("forget_gates_right_saturated", "output_gates_not_saturated",
                    "first_layer_diffuse"):
        families = ("lstm", "gru") if claim_id == "first_layer_diffuse" else ("lstm",)
        return _train_rows(runs, [r.run_id for r, _ in _saturation(runs, df, families)])
    if claim_id in _UNIT_CLAIMS:
        dataset, concepts = _UNIT_CLAIMS[claim_id]
        best = _best_unit(runs, dataset, concepts)
        return _train_rows(runs, [best[0].run_id] if best else [])
    if not len(df):
        return _train_rows(runs, [])
    names = _LOSS_VARIANTS.get(claim_id, variants("lstm"))
    return _train_rows(runs, df[df.variant.isin(names)].run_id)


def _number(rows: pd.DataFrame, column: str) -> pd.Series:
    if column not in rows:
        return pd.Series(float("nan"), index=rows.index)
    return pd.to_numeric(rows[column], errors="coerce")


def run_size(rows: pd.DataFrame) -> pd.DataFrame:
    """Per run: epochs trained (the logged epochs_trained, else the configured epochs),
    width (seeds.width: the Table 1 row width, else the hidden size) and the corpus
    characters it was cut to (data.max_chars; NaN: the whole corpus)."""
    epochs = _number(rows, "epochs_trained").fillna(_number(rows, "param.train.epochs"))
    w = width(rows) if "param.model.hidden_size" in rows else _number(rows, "_")
    return pd.DataFrame({"epochs": epochs, "width": pd.to_numeric(w, errors="coerce"),
                         "chars": _number(rows, "param.data.max_chars")}, index=rows.index)


def _span(v: pd.Series, fmt="{:,.0f}") -> str:
    lo, hi = v.min(), v.max()
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}–{fmt.format(hi)}"


def too_small(rows: pd.DataFrame) -> str | None:
    """Why the runs behind a claim are too small to judge it (the thresholds and what the
    runs had), or None when every run is at least MIN_EPOCHS, MIN_WIDTH and
    MIN_CORPUS_CHARS (a size not logged is not held against a run)."""
    if rows is None or not len(rows):
        return None
    size = run_size(rows)
    short = []
    low = size.epochs < MIN_EPOCHS
    if low.any():
        short.append(f"{_span(size.epochs[low])} epochs trained (needs ≥ {MIN_EPOCHS})")
    low_w = size.width < MIN_WIDTH
    if low_w.any():
        short.append(f"width {_span(size.width[low_w])} units (needs ≥ {MIN_WIDTH})")
    low_c = size.chars < MIN_CORPUS_CHARS
    if low_c.any():
        short.append(f"only the first {_span(size.chars[low_c])} characters of the corpus "
                     f"(needs ≥ {MIN_CORPUS_CHARS:,})")
    if not short:
        return None
    bad = int((low | low_w | low_c).sum())
    who = ("the run" if len(rows) == 1 else f"all {len(rows)} runs" if bad == len(rows)
           else f"{bad} of the {len(rows)} runs")
    return f"{who} behind it: " + "; ".join(short)


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Claims")
    df = _test_by(runs)
    rows = []
    for claim in published()["claims"]:
        verdict, evidence = CHECKS[claim["id"]](runs, df)
        why = too_small(behind(claim["id"], runs, df)) if verdict != NOT_RUN else None
        if why:
            evidence = (f"Runs below the stated size, {why}. At this size the check "
                        f"would give '{verdict}': {evidence}")
            verdict = TOO_SMALL
        rows.append({"claim": claim["text"], "source": claim["source"], "verdict": verdict,
                     "evidence": evidence})
    table = pd.DataFrame(rows)
    table.to_csv(out / "claims.csv", index=False)
    sec.tables["claims"] = table
    sec.captions["claims"] = (
        "Published claims and our verdicts; evidence in test nats/char (test split) for the "
        "loss claims, val nats/char (validation split) for the sweeps")
    counts = table.verdict.value_counts().to_dict()
    small = (f"{counts[TOO_SMALL]} too small to judge, " if counts.get(TOO_SMALL) else "")
    sec.text = (f"{counts.get(REPRODUCED, 0)} reproduced, {counts.get(NOT, 0)} not "
                f"reproduced, {small}{counts.get(NOT_RUN, 0)} not run. A claim is "
                f"**{TOO_SMALL}** when a run behind it trained fewer than {MIN_EPOCHS} "
                f"epochs, had fewer than {MIN_WIDTH} units per layer (row width) or saw "
                f"less than {MIN_CORPUS_CHARS:,} characters of its corpus (data.max_chars): "
                "such runs have barely begun to learn, so their differences say how fast a "
                "cell starts, not what it learns; its evidence says what the runs had and "
                "what the check would give. Verdicts are computed from "
                f"the runs. Losses are {UNIT}, mean ± sd over n seeds per variant and corpus "
                f"(sweeps: val nats/char). With two or more seeds on both sides a variant is "
                f"better or worse when Welch's t-test gives p < {ALPHA}; with one seed a "
                f"difference under {MARGIN} nats/char is not claimed. Unit claims use the "
                "thresholds shown.")
    return sec
