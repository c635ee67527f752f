r"""How a trace lays text out, shared by the HTML page (study.probes.traces) and the PNG
(study.probes.figures): every character of the text appears once, in order, with its own
value, except '\r', which is not drawn (a CRLF line ends once); '\n' is drawn as '↵' at
the end of its line, and the next character starts a new line (`cells`, `trace_rows`).
And how it colours a character (`trace_colours`): one palette for both, and their legends.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

NEWLINE = "↵"  # how a '\n' is drawn


def cells(text: str, values) -> Iterator[tuple[str, float]]:
    r"""(character, value) for each character drawn: all of `text` but '\r', in order."""
    for ch, v in zip(text, values, strict=True):
        if ch != "\r":
            yield ch, float(v)


def trace_rows(text: str, values, width: int) -> list[list[tuple[str, float]]]:
    r"""The text laid out in rows of at most `width` cells, one cell per character drawn:
    a line longer than `width` wraps onto the next row (no character lost); a '\n' ends its
    row as '↵' (on a row of its own when its line filled the previous one exactly). No
    empty row after a final '\n'; no row at all for an empty text."""
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    rows: list[list[tuple[str, float]]] = []
    row: list[tuple[str, float]] = []
    for ch, v in cells(text, values):
        if len(row) == width:  # full: wrap
            rows.append(row)
            row = []
        row.append((NEWLINE if ch == "\n" else ch, v))
        if ch == "\n":
            rows.append(row)
            row = []
    if row:
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# colours

RGB = tuple[int, int, int]

NEGATIVE: RGB = (244, 109, 67)  # −1: orange-red
POSITIVE: RGB = (80, 150, 255)  # +1: light blue
ZERO: RGB = (255, 255, 255)  # 0: white
MISSING: RGB = (217, 217, 217)  # a value that is not a number: grey
TEXT: RGB = (0, 0, 0)  # the characters, on every background

LEGEND_VALUES = (-1.0, -0.5, 0.0, 0.5, 1.0)  # the legend's swatches, both ends included
LEGEND_CAPTION = "activation of the unit, −1 … +1: orange-red below 0, white at 0, blue above"


def trace_colours(v: float) -> tuple[RGB, RGB]:
    """(background, text colour) of a character whose unit's activation is `v`, as sRGB
    0–255: white at 0, fading to orange-red at −1 and to light blue at +1 (clipped outside
    [−1, 1]; grey for a value that is not a number, ±inf included), black text throughout.

    The one palette of every trace: the HTML page (study.probes.traces), the PNG
    (study.probes.figures.trace_png) and both legends draw with it, so they cannot disagree.

    Why light colours under black text, not Karpathy15's saturated red/blue: black on
    rgb(0,0,255) has a contrast of 2.4:1, unreadable exactly where a unit fires hardest.
    Each end here has a relative luminance of about 0.31, so black text keeps at least
    7.1:1 everywhere (WCAG AAA, and AA's 4.5:1 with room to spare): each background is a
    straight sRGB line from white to its end, on which luminance falls steadily, so an
    end is the darkest background there is. White text on dark cells would instead flip
    the text colour somewhere in between, where neither colour reads well and the eye
    picks up the flip as a boundary that is not in the data. The two ends have the same
    luminance, so neither sign looks stronger, and differ in hue (orange against blue,
    told apart with the common colour-vision deficiencies too); the sign stays that of
    Karpathy15's figures (red below, blue above)."""
    v = float(v)
    if not math.isfinite(v):
        return MISSING, TEXT
    v = max(-1.0, min(1.0, v))
    end = NEGATIVE if v < 0 else POSITIVE
    a = abs(v)
    return tuple(round(z + (e - z) * a) for z, e in zip(ZERO, end, strict=True)), TEXT


def css_rgb(rgb: RGB) -> str:
    """'rgb(r,g,b)' of an sRGB 0–255 triple (for CSS)."""
    return "rgb({},{},{})".format(*rgb)
