"""How numbers are shown: the one conversion from nats to bits and the one markdown table.

Losses are computed in nats per character (natural log); bits per character are
nats / ln 2. Everything a user sees names its unit and split, e.g. "val 1.2345 nats/char
(1.7810 bits/char)".
"""

from __future__ import annotations

import math

LN2 = math.log(2)


def bits(nats: float) -> float:
    """nats/char -> bits/char."""
    return nats / LN2


def loss_text(nats: float, split: str = "", digits: int = 4) -> str:
    """'val 1.2345 nats/char (1.7810 bits/char)'."""
    lead = f"{split} " if split else ""
    return f"{lead}{nats:.{digits}f} nats/char ({bits(nats):.{digits}f} bits/char)"


def markdown_table(df, floats: str = "{:.3f}") -> str:
    """A pandas DataFrame as a GitHub markdown table: floats formatted with `floats`, NaN as
    '–', text columns left-aligned and numbers right-aligned."""
    if df.empty:
        return "_(no rows)_\n"
    cols = [str(c) for c in df.columns]

    def fmt(v):
        if isinstance(v, float):
            return "–" if v != v else floats.format(v)
        return str(v)

    numeric = [df[c].dtype.kind in "fiu" for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join(" ---: " if n else " --- " for n in numeric) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
