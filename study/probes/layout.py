r"""How a trace lays text out, shared by the HTML page (study.probes.traces) and the PNG
(study.probes.figures): every character of the text appears once, in order, with its own
value, except '\r', which is not drawn (a CRLF line ends once); '\n' is drawn as '↵' at
the end of its line, and the next character starts a new line.
"""

from __future__ import annotations

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
