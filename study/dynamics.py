"""Training dynamics against n-grams (Karpathy15 §4): does a model pass through low-order
n-gram behaviour on its way to what it finally predicts?

For each kept snapshot of a run (train.keep_checkpoints: all keeps the weights at
initialisation, after updates 1, 2, 4, 8, ... of the first epoch, where a model changes
fastest, and after every epoch), its predictive distribution over the
next character is compared, position by position, with that of each n-gram model of
order 1..K (K = probes.errors_ngram_order, default 9; study.ngram.kn, fitted on the train
split) on one fixed stretch of the validation split: its first probes.dynamics_chars
characters, read by the model as one stream from the zero state, and by the n-grams with
the context the stretch itself gives (study.ngram.kn's rule at its start). The first
`warmup` positions (probes.warmup) are left out, where the model's state is still filling.

The measure is the Jensen–Shannon divergence, in nats (0 for identical predictions, at
most ln 2 ≈ 0.693): JS(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m) with m = ½ (p + q), symmetric
and finite even where one model gives a character probability 0 (the model's softmax
and the Kneser–Ney models never do). Reported per (snapshot, order): the mean JS over the
positions, and per snapshot the order the model is closest to; a snapshot is named by the
updates done (the MLflow step of its metrics) and the epochs that is (fractional).

The n-grams' distributions on the stretch are cached with their test results
(study.ngram.cache), so the same corpus is fitted once.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from study.ngram.cache import stretch_distributions


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen–Shannon divergence (nats) of two (N, V) arrays of distributions."""
    from scipy.special import xlogy

    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = (xlogy(p, p) - xlogy(p, m)).sum(-1)
        kl_q = (xlogy(q, q) - xlogy(q, m)).sum(-1)
    return np.maximum(0.5 * (kl_p + kl_q), 0.0)


@torch.no_grad()
def model_distributions(model, ids: torch.Tensor, device="cpu") -> np.ndarray:
    """(N, V) float64: row i is the model's distribution of ids[i] given ids[:i], read as
    one stream from the zero state; row 0 (nothing read) is NaN."""
    was = model.training
    model.eval()
    try:
        x = ids[:-1].long().view(-1, 1).to(device)  # (T, 1)
        logits, _, _ = model(x, None)
        p = torch.softmax(logits[:, 0].double(), -1).cpu().numpy()  # (T, V): predicts ids[1:]
    finally:
        model.train(was)
    out = np.full((len(ids), p.shape[1]), np.nan)
    out[1:] = p
    return out


def dynamics(snapshots, corpus, cfg, cache_dir: Path | None, progress: bool = True
             ) -> pd.DataFrame:
    """snapshots: iterable of (update, epoch, model). One row per (snapshot, order): mean
    JS divergence (nats) between the model's and the order's predictions on the stretch,
    and the positions averaged over."""
    p = cfg.probes
    ids = corpus.splits["val"][:p.dynamics_chars]
    orders = list(range(1, p.errors_ngram_order + 1))
    grams = stretch_distributions(corpus, orders, len(ids), cfg.ngram.smoothing, cache_dir,
                                  progress)
    keep = slice(max(1, min(p.warmup, len(ids) // 10)), len(ids))
    rows = []
    for update, epoch, model in snapshots:
        q = model_distributions(model, ids, next(model.parameters()).device)[keep]
        for k in orders:
            js = js_divergence(q, grams[k][keep])
            rows.append({"update": update, "epoch": epoch, "order": k,
                         "js_nats": float(js.mean()), "positions": len(js)})
    return pd.DataFrame(rows)


def closest(df: pd.DataFrame) -> pd.DataFrame:
    """Per snapshot, the n-gram order whose predictions the model's are closest to."""
    i = df.groupby("update").js_nats.idxmin()
    return df.loc[i, ["update", "epoch", "order", "js_nats"]].rename(
        columns={"order": "closest_order"}).reset_index(drop=True)


def metrics(df: pd.DataFrame) -> dict[int, dict[str, float]]:
    """Per snapshot, the metrics logged with step = its updates: errors/dynamics_js_order_NN
    and errors/dynamics_closest_order."""
    out: dict[int, dict[str, float]] = {}
    for r in df.itertuples():
        out.setdefault(int(r.update), {})[f"errors/dynamics_js_order_{r.order:02d}"] = \
            r.js_nats
    for r in closest(df).itertuples():
        out[int(r.update)]["errors/dynamics_closest_order"] = r.closest_order
    return out


def figure(df: pd.DataFrame, title: str, path: Path) -> None:
    """Mean JS divergence against the updates done (symmetric-log axis: the first epoch's
    doubling snapshots spread out), one line per n-gram order."""
    from study.probes.figures import plt

    fig, ax = plt.subplots(figsize=(7.6, 4.0), dpi=120)
    orders = sorted(df.order.unique())
    cmap = plt.get_cmap("viridis")
    for j, k in enumerate(orders):
        d = df[df.order == k].sort_values("update")
        ax.plot(d["update"], d.js_nats, "o-", ms=3, lw=1.2,
                color=cmap(0.9 * j / max(1, len(orders) - 1)), label=f"order {k}")
    near = closest(df)
    for r in near.itertuples():
        ax.annotate(f"{r.closest_order}", (r.update, r.js_nats), textcoords="offset points",
                    xytext=(0, -11), ha="center", fontsize=7, color="#222222")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("updates (symmetric log scale; 0: initial weights)")
    ax.set_ylabel("mean JS divergence on val (nats)")
    ax.set_ylim(0, math.log(2) * 1.02)
    ends = df[df.epoch == df.epoch.round()].drop_duplicates("update")
    for r in ends.itertuples():
        if r.epoch >= 1:
            ax.axvline(r.update, color="#bbbbbb", lw=0.8, zorder=0)
            ax.annotate(f"epoch {int(r.epoch)}", (r.update, math.log(2)), fontsize=6,
                        rotation=90, va="top", ha="right", color="#555555")
    ax.set_title(title + "\n(number under a point: the order closest at that snapshot)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="n-gram",
              title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
