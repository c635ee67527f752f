"""Test losses over seeds, and the one rule by which the report calls one variant's loss
lower than another's (the claims and the variants table both use it).

Each (variant, corpus) is summarised by the mean, the sample standard deviation and the
number n of seeds of its test loss (nats/char, test split). With n ≥ 2 seeds on both sides
a difference is claimed when Welch's t-test gives p < ALPHA; with one seed on either side
only a difference of more than MARGIN nats/char is.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from analyses.common import variant_order

MARGIN = 0.02  # nats/char: with one seed, differences below this are not claimed
ALPHA = 0.05  # Welch's t-test level, with two or more seeds on both sides
ONE_SEED = f"one seed: a difference under {MARGIN} nats/char is not claimed"
WELCH = f"Welch's t-test, p < {ALPHA}"
UNIT = "test nats/char"  # what every loss below is: mean cross-entropy on the test split


def width(df: pd.DataFrame) -> pd.Series:
    """A run's row width: tag row_width where the ablation matched parameter counts to a
    row (Karpathy15's Table 1), else its hidden size."""
    hidden = pd.to_numeric(df["param.model.hidden_size"], errors="coerce")
    if "tag.row_width" not in df:
        return hidden
    return pd.to_numeric(df["tag.row_width"], errors="coerce").fillna(hidden)


def losses_by_seed(train: pd.DataFrame) -> tuple[pd.DataFrame, tuple[int, int] | None]:
    """The finished training runs of the most common size (layers, row width), one row per
    (dataset, variant, seed): run_id, dataset, variant, seed, test (nats/char, test split).
    A seed run more than once counts once (its newest run). Returns the rows and the size."""
    cols = ["run_id", "dataset", "variant", "seed", "test"]
    if train.empty:
        return pd.DataFrame(columns=cols), None
    seed = train["tag.seed"] if "tag.seed" in train else pd.Series(pd.NA, index=train.index)
    if "param.train.seed" in train:
        seed = seed.fillna(train["param.train.seed"])
    df = train.assign(dataset=train["tag.dataset"], variant=train["tag.variant"],
                      seed=seed.fillna(train.run_id).astype(str).str.removesuffix(".0"),
                      test=train.test_nats_per_char.astype(float),
                      layers=train["param.model.num_layers"], width=width(train))
    size = df.groupby(["layers", "width"]).size().idxmax()
    df = df[(df.layers == size[0]) & (df.width == size[1])]
    df = df.sort_values("start", ascending=False, na_position="last") if "start" in df else df
    df = df.drop_duplicates(["dataset", "variant", "seed"])
    return df[cols].reset_index(drop=True), (int(size[0]), int(size[1]))


def summary(losses: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, variant): n seeds, mean and sd (sample, NaN for one seed) of the test
    loss in nats/char, the variants in the registry's order."""
    g = losses.groupby(["dataset", "variant"]).test
    out = pd.DataFrame({"n": g.size(), "mean": g.mean(), "sd": g.std(ddof=1)}).reset_index()
    order = {v: i for i, v in enumerate(variant_order(out.variant))}
    return out.sort_values(["dataset", "variant"], key=lambda c: c.map(order)
                           if c.name == "variant" else c).reset_index(drop=True)


@dataclass
class Verdict:
    lower: bool  # is a's loss clearly below b's?
    p: float  # Welch's p-value; NaN when one side has one seed
    rule: str  # how it was decided, for the evidence text


def lower(a: pd.Series, b: pd.Series) -> Verdict:
    """Is the loss in `a` (one value per seed) clearly below `b`'s? Welch's t-test at
    ALPHA with two or more seeds on both sides, else the MARGIN rule on the means."""
    a, b = pd.Series(a, dtype=float).dropna(), pd.Series(b, dtype=float).dropna()
    if len(a) >= 2 and len(b) >= 2:
        with warnings.catch_warnings():  # identical values on both sides: p is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        return Verdict(bool(a.mean() < b.mean() and p < ALPHA), p,
                       f"{WELCH} (n = {len(a)} vs {len(b)})")
    return Verdict(bool(a.mean() < b.mean() - MARGIN), math.nan, ONE_SEED)


def mean_sd(values: pd.Series) -> str:
    """'3.740 ± 0.012 (n = 3)'; '3.740 (n = 1)' for one seed. The caller names the unit."""
    v = pd.Series(values, dtype=float).dropna()
    if len(v) >= 2:
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f} (n = {len(v)})"
    return f"{v.mean():.3f} (n = {len(v)})"


def rules(verdicts) -> str:
    """The rules the verdicts were decided by, once each: what the evidence text says."""
    return "; ".join(dict.fromkeys(v.rule.split(" (n =")[0] for v in verdicts))
