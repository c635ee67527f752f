"""How numbers are shown: the one conversion from nats to bits and the one table layout.

Losses are computed in nats per character (natural log); bits per character are
nats / ln 2. Everything a user sees names its unit and split, e.g. "val 1.2345 nats/char
(1.7810 bits/char)".
"""

from __future__ import annotations

import math
import re

LN2 = math.log(2)


def bits(nats: float) -> float:
    """nats/char -> bits/char."""
    return nats / LN2


def loss_text(nats: float, split: str = "", digits: int = 4) -> str:
    """'val 1.2345 nats/char (1.7810 bits/char)'."""
    lead = f"{split} " if split else ""
    return f"{lead}{nats:.{digits}f} nats/char ({bits(nats):.{digits}f} bits/char)"


_NUMBER = re.compile(r"^\s*[-+−]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?"
                     r"(\s*±\s*([-+−]?(\d+(\.\d*)?|\.\d+)|–))?\s*$")


def is_numeric(column) -> bool:
    """A column of numbers (what a table right-aligns): a numeric dtype, or text that is a
    number in every filled cell ('1.876 ± 0.032', '3.2e-05'); booleans and names are text."""
    if column.dtype.kind in "fiu":
        return True
    if column.dtype.kind == "b":
        return False
    filled = [v for v in column if not (v is None or (isinstance(v, float) and v != v))]
    return bool(filled) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool)
        or isinstance(v, str) and _NUMBER.match(v) for v in filled)


def cell_text(v, floats: str = "{:.3f}") -> str:
    """One table cell: floats formatted with `floats`, a missing value as '–'."""
    if v is None or (isinstance(v, float) and v != v) or type(v).__name__ == "NAType":
        return "–"
    if isinstance(v, float):
        return floats.format(v)
    return str(v)


def markdown_table(df, floats: str = "{:.3f}") -> str:
    """A pandas DataFrame as a GitHub markdown table: floats formatted with `floats`, NaN as
    '–', numbers (is_numeric: 'mean ± sd' text too) right-aligned, text left-aligned."""
    if df.empty:
        return "_(no rows)_\n"
    numeric = [is_numeric(df[c]) for c in df.columns]

    def cell(v) -> str:
        return cell_text(v, floats).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(str(c) for c in df.columns) + " |",
             "|" + "|".join(" ---: " if n else " :--- " for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
