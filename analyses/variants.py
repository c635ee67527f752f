"""Greff15-style comparison: test loss per variant and corpus, mean ± sd over seeds with
one point per seed, the baseline (peephole, Greff15's vanilla LSTM) marked, and Welch's
t-test against it where seeds allow (analyses.seeds: the rule the claims use too)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analyses.common import COLUMN_WIDTH, Section, palette, save
from analyses.runs import Runs
from analyses.seeds import ALPHA, MARGIN, losses_by_seed, lower, summary
from study.formats import bits

BASELINE = "peephole"


def table(losses: pd.DataFrame) -> pd.DataFrame:
    """Per corpus and variant: n seeds, mean and sd of the test loss (nats/char), the mean
    in bits/char, the difference to the baseline's mean and Welch's p against it."""
    rows = []
    for s in summary(losses).itertuples():
        d = losses[losses.dataset == s.dataset]
        base, own = d[d.variant == BASELINE].test, d[d.variant == s.variant].test
        verdict = lower(own, base) if s.variant != BASELINE and len(base) else None
        rows.append({"dataset": s.dataset, "variant": s.variant, "n seeds": s.n,
                     "test nats/char mean": s.mean, "test nats/char sd": s.sd,
                     "test bits/char mean": bits(s.mean),
                     "vs baseline (test nats/char)": s.mean - base.mean() if len(base)
                     else float("nan"),
                     "Welch p vs baseline": verdict.p if verdict else float("nan")})
    return pd.DataFrame(rows)


def shown(t: pd.DataFrame) -> pd.DataFrame:
    """The table as the report prints it: mean ± sd in one column."""
    pm = [f"{m:.3f} ± {s:.3f}" if s == s else f"{m:.3f} ± –"
          for m, s in zip(t["test nats/char mean"], t["test nats/char sd"], strict=True)]
    return pd.DataFrame({"dataset": t.dataset, "variant": t.variant,
                         "test nats/char, mean ± sd": pm, "n seeds": t["n seeds"],
                         "test bits/char, mean": t["test bits/char mean"],
                         "vs baseline (test nats/char)": t["vs baseline (test nats/char)"],
                         "Welch p vs baseline": t["Welch p vs baseline"]})


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Variants (Greff15's one-change LSTMs and Karpathy15's cell types)")
    df = runs.train
    if df.empty or df["tag.variant"].nunique() < 2:
        sec.missing = "fewer than two variants finished: run `python -m study.run " \
                      "configs/ablation.yaml`"
        return sec
    df, size = losses_by_seed(df)
    t = table(df)
    t.to_csv(out / "variants.csv", index=False)
    sec.tables["variants"] = shown(t)
    sec.captions["variants"] = (
        f"Test loss per variant and corpus ({size[0]} layers × {size[1]} units): nats/char "
        f"(and bits/char) on the test split, mean ± sd over seeds, and the difference to the "
        f"{BASELINE} baseline with Welch's p")
    sec.sources = list(df.run_id)
    order = list(t.groupby("variant")["test nats/char mean"].mean().sort_values().index)
    datasets = sorted(df.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(COLUMN_WIDTH * len(datasets), 2.8),
                             squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        d = df[df.dataset == dataset]
        sns.pointplot(data=d, x="variant", y="test", order=order, errorbar="sd",
                      linestyle="none", color="0.2", markers="_", ax=ax)
        sns.stripplot(data=d, x="variant", y="test", order=order, hue="variant",
                      palette=palette(order), size=5, ax=ax, legend=False)
        # a variant far off the rest (nfg diverges on a continuous stream) gets an arrow
        # at the top instead of squashing the others into one band
        med = d.groupby("variant").test.mean().median()
        off = d.groupby("variant").test.mean()
        off = off[off > med + 0.75]
        if len(off):
            top = d[~d.variant.isin(off.index)].test.max() + 0.08
            ax.set_ylim(d.test.min() - 0.05, top)
            for v, value in off.items():
                x = order.index(v)
                ax.annotate(f"{value:.2f} ↑", (x, top), xytext=(0, -10),
                            textcoords="offset points", ha="center", fontsize=7,
                            color="#d62728")
        base = d[d.variant == BASELINE].test.mean()
        if base == base:
            ax.axhline(base, color="0.5", ls="--", lw=0.8, label=f"{BASELINE} (baseline)")
        ax.set(title=dataset, xlabel="", ylabel="test loss (nats/char)")
        ax.tick_params(axis="x", rotation=45)
    # the key sits below the panels, outside every axes, so that it hides no point
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.tight_layout()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=len(handles), frameon=False)
    n_seeds = int(t["n seeds"].max())
    sec.figures.append(save(fig, out, "variants", (
        f"Test loss (nats/char, test split) per variant ({size[0]}×{size[1]}), one point "
        "per seed" + (", bars: mean ± sd over seeds" if n_seeds > 1 else
                      " (one seed: no spread)")
        + f"; dashed: the {BASELINE} baseline's mean; values off the scale are written at "
        "the top.")))
    sec.text = (
        f"Test loss in nats/char on the test split ({size[0]} layers × {size[1]} units), "
        "mean ± sd (sample) over n seeds per variant and corpus (a seed run twice counts "
        f"once); 'vs baseline' is the difference of the means to the {BASELINE} LSTM "
        f"(positive: worse). Welch's t-test against the baseline where both have two or "
        f"more seeds (a difference is claimed at p < {ALPHA}); with one seed no test is "
        f"possible and a difference under {MARGIN} nats/char is not claimed.")
    return sec
