r"""Concepts computed from the text alone: one value per character, for scoring units.

Each concept is a plain function text -> np.ndarray (one value per character) in the
registry CONCEPTS, declared binary (scored by ROC-AUC) or continuous (scored by Pearson
and Spearman correlation). The value at position t is the state *after* reading
character t, which is what a model's activation at step t can know. Adding a concept is
one decorated function.

Every concept takes any text (empty, one character, CRLF, tabs, any Unicode) and returns a
float32 array of len(text) values. A line ends at '\n' and nowhere else: '\r' is an
ordinary character (so a CRLF line's '\r' belongs to it), as are the other separators
str.splitlines knows (\v, \f, \x1c-\x1e, \x85, \u2028, \u2029).

The code concepts share one pass of a small C lexer that knows block and line comments,
string and character literals and backslash escapes, so that a quote inside a comment, a
comment marker inside a string, or '"' do not fool them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Concept:
    name: str
    kind: str  # "binary" | "continuous"
    fn: Callable[[str], np.ndarray]
    about: str


CONCEPTS: dict[str, Concept] = {}


def concept(kind: str, about: str):
    def register(fn):
        CONCEPTS[fn.__name__] = Concept(fn.__name__, kind, fn, about)
        return fn
    return register


# ---------------------------------------------------------------------------------------
# prose


@concept("binary", "inside double quotes: a quote toggles (the opening one is inside); a "
                   "paragraph break closes, as a quotation running over paragraphs reopens")
def in_quotes(text: str) -> np.ndarray:
    """English typography opens a quotation that runs over several paragraphs again at each
    one and closes it once, so a plain toggle would fall out of step for the rest of the
    text; a blank line (a paragraph break) therefore ends the quotation."""
    out = np.zeros(len(text), np.float32)
    inside, blank = False, False  # blank: only whitespace since the last newline
    for t, ch in enumerate(text):
        if ch == "\n":
            if blank:
                inside = False
            blank = True
        elif not ch.isspace():
            blank = False
            if ch == '"':
                inside = not inside
        out[t] = inside
    return out


@concept("continuous", "characters since the last newline (0 at the newline)")
def line_position(text: str) -> np.ndarray:
    r"""Lines end at '\n' only: '\r' (of a CRLF) counts as a character of its line, and
    so do \v, \f, \x85, \u2028 and the other characters str.splitlines would break at."""
    out = np.zeros(len(text), np.float32)
    pos = 0
    for t, ch in enumerate(text):
        pos = 0 if ch == "\n" else pos + 1
        out[t] = pos
    return out


# ---------------------------------------------------------------------------------------
# code


@dataclass
class Lexed:
    comment: np.ndarray  # inside /* */ or // (both markers included)
    string: np.ndarray  # inside a "..." literal (the opening quote is inside, the closing not)
    brace: np.ndarray  # {} depth in code
    paren: np.ndarray  # () depth in code
    if_cond: np.ndarray  # inside the parentheses of an if (...) condition


CODE, BLOCK, LINE, STRING, CHAR = range(5)


@functools.lru_cache(maxsize=4)
def lex_c(text: str) -> Lexed:
    """One pass of a small C lexer; each array holds the state after each character."""
    n = len(text)
    comment, string = np.zeros(n, np.float32), np.zeros(n, np.float32)
    brace, paren, if_cond = (np.zeros(n, np.float32) for _ in range(3))
    state, depth_b, depth_p = CODE, 0, 0
    if_depths: list[int] = []  # paren depths at which an if-condition opened
    pending_if = False  # read `if`, waiting for its `(`
    t = 0
    while t < n:
        ch, nxt = text[t], text[t + 1] if t + 1 < n else ""
        span, in_comment, in_string = 1, False, False
        if state == CODE:
            if ch == "/" and nxt in "*/" and nxt:
                state, span, in_comment = (BLOCK if nxt == "*" else LINE), 2, True
            elif ch == '"':
                state, in_string = STRING, True
            elif ch == "'":
                state = CHAR
            elif ch == "{":
                depth_b += 1
            elif ch == "}":
                depth_b = max(0, depth_b - 1)
            elif ch == "(":
                depth_p += 1
                if pending_if:
                    if_depths.append(depth_p)
            elif ch == ")":
                if if_depths and if_depths[-1] == depth_p:
                    if_depths.pop()
                depth_p = max(0, depth_p - 1)
            if ch == "i" and nxt == "f" and _is_word(text, t, 2):
                pending_if, span = True, 2
            elif not ch.isspace():
                pending_if = False
        elif state == BLOCK:
            in_comment = True
            if ch == "*" and nxt == "/":
                state, span = CODE, 2
        elif state == LINE:
            if ch == "\n":
                state = CODE
            else:
                in_comment = True
        elif state == STRING:
            if ch == "\\":
                span, in_string = 2, True
            elif ch in '"\n':  # closed (or left unterminated at the line's end)
                state = CODE
            else:
                in_string = True
        elif state == CHAR:
            if ch == "\\":
                span = 2
            elif ch in "'\n":
                state = CODE
        end = min(n, t + span)
        comment[t:end], string[t:end] = in_comment, in_string
        brace[t:end], paren[t:end], if_cond[t:end] = depth_b, depth_p, bool(if_depths)
        t = end
    return Lexed(comment, string, brace, paren, if_cond)


def _is_word(text: str, t: int, length: int) -> bool:
    """Whether text[t:t+length] stands alone (not part of a longer identifier)."""
    before = text[t - 1] if t > 0 else " "
    after = text[t + length] if t + length < len(text) else " "
    return not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_")


@concept("binary", "inside a C comment, /* ... */ or // ... (markers included)")
def in_comment(text: str) -> np.ndarray:
    return lex_c(text).comment


@concept("binary", "inside a C string literal \"...\" (outside comments; escapes kept)")
def in_string(text: str) -> np.ndarray:
    return lex_c(text).string


@concept("continuous", "depth of {} in code (not counting comments and literals)")
def brace_depth(text: str) -> np.ndarray:
    return lex_c(text).brace


@concept("continuous", "depth of () in code (not counting comments and literals)")
def paren_depth(text: str) -> np.ndarray:
    return lex_c(text).paren


@concept("binary", "inside the parentheses of an if (...) condition")
def in_if_condition(text: str) -> np.ndarray:
    return lex_c(text).if_cond


@concept("continuous", "indentation of the current line in columns (tab = 8)")
def indentation(text: str) -> np.ndarray:
    r"""The width of the spaces and tabs that open the line, on every character of the line
    (its '\n' included). Lines end at '\n' only, as in line_position: '\r' and the other
    characters str.splitlines breaks at (\v, \f, \x1c-\x1e, \x85, \u2028, \u2029) are
    ordinary characters, which end the indentation like any character but ' ' and '\t'."""
    out = np.zeros(len(text), np.float32)
    start = 0
    for line in text.split("\n"):
        width = 0
        for ch in line:
            if ch == " ":
                width += 1
            elif ch == "\t":
                width += 8 - width % 8
            else:
                break
        end = start + len(line) + 1  # and its '\n' (past the end for the last line)
        out[start:end] = width
        start = end
    return out


def signals(text: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Every (or the named) concept's signal over `text`."""
    return {n: CONCEPTS[n].fn(text) for n in (names or CONCEPTS)}
