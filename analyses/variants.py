"""Greff15-style comparison: test loss per variant and corpus, seeds as points, the
baseline (peephole, Greff15's vanilla LSTM) marked, Welch's t-test where seeds allow."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from scipy import stats

from analyses.common import COLUMN_WIDTH, Section, palette, save
from analyses.runs import Runs, nats_to_bits

BASELINE = "peephole"


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Variants (Greff15's one-change LSTMs and Karpathy15's cell types)")
    df = runs.train
    if df.empty or df["tag.variant"].nunique() < 2:
        sec.missing = "fewer than two variants finished: run `python -m study.run " \
                      "configs/ablation.yaml`"
        return sec
    df = df.assign(variant=df["tag.variant"], dataset=df["tag.dataset"],
                   test=df.test_nats_per_char)
    # one size per comparison: the most common (layers, width) among the runs
    size = df.groupby(["param.model.num_layers", "param.model.hidden_size"]).size().idxmax()
    df = df[(df["param.model.num_layers"] == size[0]) & (df["param.model.hidden_size"] == size[1])]
    rows = []
    for (dataset, variant), g in df.groupby(["dataset", "variant"]):
        base = df[(df.dataset == dataset) & (df.variant == BASELINE)].test
        row = {"dataset": dataset, "variant": variant, "seeds": len(g),
               "test nats/char": g.test.mean(), "test bits/char": nats_to_bits(g.test.mean()),
               "vs baseline": g.test.mean() - base.mean() if len(base) else float("nan")}
        if variant != BASELINE and len(g) >= 2 and len(base) >= 2:
            row["Welch p"] = stats.ttest_ind(g.test, base, equal_var=False).pvalue
        else:
            row["Welch p"] = float("nan")
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["dataset", "test nats/char"])
    table.to_csv(out / "variants.csv", index=False)
    sec.tables["variants"] = table
    sec.sources = list(df.run_id)
    order = list(table.drop_duplicates("variant").sort_values("test nats/char").variant)
    datasets = sorted(df.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(COLUMN_WIDTH * len(datasets), 2.8),
                             squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        d = df[df.dataset == dataset]
        sns.pointplot(data=d, x="variant", y="test", order=order, errorbar=("ci", 95),
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
            ax.legend(loc="upper left")
        ax.set(title=dataset, xlabel="", ylabel="test loss (nats/char)")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    n_seeds = int(table.seeds.max())
    sec.figures.append(save(fig, out, "variants", (
        f"Test loss per variant ({int(size[0])}×{int(size[1])}), one point per seed"
        + (", bars: 95% intervals" if n_seeds > 1 else " (one seed: no intervals)")
        + f"; dashed: the {BASELINE} baseline; values off the scale are written at the "
        "top.")))
    sec.text = (
        "Test loss (nats/char) per variant; 'vs baseline' is the difference to the "
        f"{BASELINE} LSTM (positive: worse). "
        + ("Welch's t-test against the baseline where both have two or more seeds. "
           if n_seeds > 1 else "With one seed per variant no significance test is "
           "possible; differences of a few hundredths of a nat are within seed-to-seed "
           "noise for models of this size. ")
       )
    return sec
