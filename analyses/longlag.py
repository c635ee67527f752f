"""Dependencies of known length (configs/longlag.yaml, study.tasks): per cell, whether it
learned a generated long-lag task, against the lag and the truncation depth k2.

A run learned the task when its test loss on the target characters is below
study.targets' threshold (a quarter of the task's chance loss). The figure draws one panel
per cell (lstm1997 with Hochreiter97's truncated gradient apart from lstm1997 with the full
one): rows the lag, columns k2, colour the target loss in nats/char, ✓ where learned; a
dotted frame marks k2 < lag, where the truncated gradient cannot reach the information.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analyses.common import COLUMN_WIDTH, Section, save, variant_order
from analyses.runs import Runs
from study.targets import SUCCESS_FRACTION, success_threshold
from study.tasks import chance_nats

TRUNCATED = " (truncated gradient)"


def outcomes(runs: Runs) -> pd.DataFrame:
    """One row per finished task run: task, cell (lstm1997's truncated gradient marked),
    lag, k2, k1, seed, the target losses (nats/char) and whether it learned the task."""
    df = runs.tasks
    if df.empty or "test_target_nats_per_char" not in df:
        return pd.DataFrame()
    truncated = df.get("param.model.truncated_gradient", pd.Series("False", index=df.index))
    out = pd.DataFrame({
        "task": df["tag.dataset"],
        "cell": df["tag.variant"] + np.where(truncated.astype(str) == "True", TRUNCATED, ""),
        "lag": df["param.data.lag"].astype(int), "k2": df["param.train.seq_len"].astype(int),
        "k1": df.get("param.train.k1"), "seed": df["tag.seed"],
        "test_target_nats_per_char": df["test_target_nats_per_char"],
        "best_val_target_nats_per_char": df.get("best_val_target_nats_per_char"),
        "run_id": df["run_id"]})
    out["threshold_nats_per_char"] = out.task.map(success_threshold)
    out["learned"] = out.test_target_nats_per_char < out.threshold_nats_per_char
    return out.sort_values(["task", "cell", "lag", "k2"]).reset_index(drop=True)


def _cells(names) -> list[str]:
    base = variant_order({n.replace(TRUNCATED, "") for n in names})
    return [c for b in base for c in (b, b + TRUNCATED) if c in set(names)]


def figure(o: pd.DataFrame, task: str):
    """Success against lag (rows) and k2 (columns), one panel per cell."""
    o = o[o.task == task]
    cells = _cells(o.cell.unique())
    lags, k2s = sorted(o.lag.unique()), sorted(o.k2.unique())
    chance, thr = chance_nats(task), success_threshold(task)
    ncol = min(3, len(cells))
    nrow = -(-len(cells) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(COLUMN_WIDTH * 0.8 * ncol + 0.8,
                                                  (0.45 * len(lags) + 1.1) * nrow + 0.4),
                             squeeze=False, layout="constrained")
    im = None
    for n, (ax, cell) in enumerate(zip(axes.flat, cells, strict=False)):
        d = o[o.cell == cell].groupby(["lag", "k2"]).test_target_nats_per_char.mean()
        grid = np.array([[d.get((lag, k2), np.nan) for k2 in k2s] for lag in lags])
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=chance, aspect="auto")
        for i, lag in enumerate(lags):
            for j, k2 in enumerate(k2s):
                v = grid[i, j]
                if v == v:
                    # viridis is dark at 0 and light at chance: white text on the dark end
                    ax.text(j, i, f"{v:.2f}" + (" ✓" if v < thr else ""), ha="center",
                            va="center", fontsize=6.5, color="k" if v > 0.6 * chance else "w")
                if k2 < lag:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ls=":",
                                               lw=0.8, ec="0.85"))
        ax.set_xticks(range(len(k2s)), [str(k) for k in k2s])
        ax.set_yticks(range(len(lags)), [str(lag) for lag in lags])
        ax.set(title=cell, xlabel="k2 (steps back-propagated)" if n >= len(cells) - ncol
               else "", ylabel="lag (chars)" if n % ncol == 0 else "")
        ax.grid(False)
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, fraction=0.04, label="test loss on targets (nats/char)")
    fig.suptitle(f"{task}: ✓ learned (target loss < {thr:.2f} nats/char, "
                 f"{SUCCESS_FRACTION:g} × chance {chance:.2f}); dotted: k2 < lag", fontsize=8)
    return fig


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Dependencies of known length: success against lag and k2")
    o = outcomes(runs)
    if o.empty:
        sec.missing = ("no runs on a generated long-lag task: run `python -m study.run "
                       "configs/longlag.yaml` (and configs/longlag_truncated.yaml)")
        return sec
    sec.sources = list(o.run_id)
    for task in sorted(o.task.unique()):
        t = o[o.task == task]
        sec.figures.append(save(figure(o, task), out, f"longlag_{task}", (
            f"{task}: per cell, the test loss on the target characters (nats/char, test "
            f"split) by lag and k2, ✓ where below {SUCCESS_FRACTION:g} × the chance loss; "
            "dotted cells have k2 < lag.")))
        wide = t.pivot_table(index="cell", columns=["lag", "k2"],
                             values="test_target_nats_per_char", aggfunc="mean")
        wide = wide.reindex(_cells(wide.index))
        wide.columns = [f"lag {lag} · k2 {k2}" for lag, k2 in wide.columns]
        sec.tables[f"longlag_{task}"] = wide.reset_index()
        sec.captions[f"longlag_{task}"] = (
            f"{task}: test loss on the target characters (nats/char, test split) per cell, "
            f"lag and k2; chance {chance_nats(task):.3f}, learned below "
            f"{success_threshold(task):.3f}")
        below = t[t.k2 < t.lag]
        above = t[t.k2 >= t.lag]
        sec.text += (
            f"**{task}** ({len(t)} runs, k1 = {', '.join(map(str, sorted(t.k1.dropna().unique())))}"
            f"): learned in {int(above.learned.sum())} of {len(above)} runs with k2 ≥ lag "
            f"and {int(below.learned.sum())} of {len(below)} with k2 < lag. ")
    return sec
