r"""Long-range dependencies: the loss at characters that close something opened far back.

Karpathy15 look at long-range interactions by comparing an LSTM with n-gram models at the
characters that need long context: a closing brace (or quote), predicted from an opener
tens or hundreds of characters earlier. This module gives the three pieces: the model's
loss at every character (`per_char_nats`), where the closers are and how far back their
openers lie (`closing_quotes`, `closing_braces`), and the mean loss per distance bin for
one model (`by_distance`) or two (`compare`).

Per-character loss
------------------
`per_char_nats(model, ids, B, seq_len, device)` reads a split exactly as
study.train.evaluate does (study.data.streams: B streams of L = (N − 1) // B characters,
the state carried across chunks of `seq_len` steps), so the mean of its finite entries is
evaluate()'s value. Entry i is the loss in nats of predicting ids[i] from the characters
before it in its stream: stream b reads ids[bL : (b+1)L] and predicts ids[bL+1 : (b+1)L+1],
so the streams' targets tile ids[1 : BL+1] and every character there gets exactly one loss
(the first character of stream b ≥ 1 is the last target of stream b − 1). NaN marks what
no stream predicts: ids[0] and the dropped tail ids[BL+1:] (at most B − 1 characters).
`context_chars(N, B)` says how many characters the model had read before each prediction,
(i − 1) mod L + 1: an opener farther back than that lay before the stream began, and the
model never saw it (at a distance d, about a fraction d / L of the closers).

Matching openers to closers
---------------------------
Both matchers take any text and return `Matches(pos, dist)`, two int64 arrays sorted by
pos: pos is the index of each matched closing character in the text, dist = pos − the
index of its opener (so 0 < dist ≤ pos, and text[pos − dist] is the opener). Indices are
into the text given, which for a split is its own text (`corpus.decode(split_ids)`): an
opener before the split's start is not seen, and its closer is then not matched (quotes)
or skipped as unmatched (braces). Characters that open without a closer, and closers
without an opener, are left out: they have no distance.

`closing_quotes(text)` — dialogue quotes in prose (WP has straight quotes only):

* A straight quote '"' closes the open quotation if one is open, else opens one: straight
  quotes alternate within a paragraph.
* Curly quotes say which they are: '“' opens (an open quotation it meets is dropped as
  unmatched, as if a paragraph break had come), '”' closes the open quotation, and a '”'
  with none open is skipped. There is one open quotation at a time, whichever character
  opened it: '"' may close a '“' and '”' a '"'.
* A paragraph break ends any open quotation unmatched. A paragraph break is a '\n' that
  ends a blank line, a line of nothing but whitespace (str.isspace: ' ', '\t', '\r', ...),
  so "\n\n" and "\r\n\r\n" both are. This follows the typographic convention (Gutenberg's
  too) that a quotation running over several paragraphs is reopened at each one and
  closed only once: without the reset, a plain toggle would fall out of step for the rest
  of the text. For straight quotes these are the rules of study.probes.concepts.in_quotes
  (which marks the characters inside a quotation); the tests check that the two agree.
* Lines end at '\n' only (as in study.probes.concepts); '\r' is ordinary whitespace.

So an unmatched quote is an opener whose paragraph ends first (the reopening of a
multi-paragraph quotation, or a stray quote, which also swaps the roles of the quotes
after it in its paragraph; nothing in the text can tell a stray one apart) or a '”'
with nothing open. Single quotes are not quotation marks here (WP uses "'" for
apostrophes). On WP the alternation stays in step: of its 17,949 quotes, 8,959 pairs
match, every closer follows a non-space and every opener precedes one; the 31 left open
are each the last in their paragraph, and 30 of them are followed by a paragraph that
opens with a quote (a quotation over several paragraphs).

`closing_braces(text)` — C braces, matched with a stack, counting only braces in code
(the lexing rules of study.probes.concepts.lex_c, so the brace_depth concept agrees):

* /* ... */ block comments (to the text's end when unterminated) and // line comments (to
  the next '\n', not included) hide the braces in them. A backslash at a line's end does
  not continue a // comment (C's line splicing is not modelled; LK has no such line).
* String literals "..." and character literals '...' hide theirs: a backslash escapes
  the character after it (so "\"{" is one string, and a backslash-newline continues the
  literal), and a literal left unterminated ends at the line's end ('\n'), so that one
  stray quote (an apostrophe in #error text, say) hides at most the rest of its line.
* A '}' with no open '{' is skipped (a split that begins inside a function, or text
  that is not C); a '{' still open at the end has no closer and is left out.

Everything outside comments and literals is code, including preprocessor lines: a brace
in both arms of an #if ... #else is counted twice, and matching may pair across them.
On LK, 17,922 of its 18,098 '{' and 18,100 '}' are in code, and they all pair up (no
closer skipped, no opener left).

Loss by distance
----------------
`by_distance(nats, pos, dist, bins)` groups the closers by dist into the bins [lo, hi)
between consecutive edges (default 1, 10, 30, 100, 300, ∞; closers outside them are left
out) and gives, per bin, the number of closers, the number with a finite loss and their
mean loss and its standard error, in nats. `compare(nats_a, nats_b, pos, dist, bins)` does
the same for two models read over the same text, on the closers where both losses are
finite: each mean, their difference b − a and its paired standard error (nats/char), and
the fraction of closers where a beats b (a's loss strictly lower; ties count for neither).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from study import data
from study.model import CharLM

BINS = (1, 10, 30, 100, 300, math.inf)  # distance edges, in characters: bins [lo, hi)


# ---------------------------------------------------------------------------------------
# per-character loss


@torch.no_grad()
def per_char_nats(model: CharLM, ids, batch_size: int, seq_len: int,
                  device: torch.device | str) -> np.ndarray:
    """The loss (nats) of predicting each of ids (N,) from what precedes it in its stream,
    read as study.train.evaluate reads a split; float64 (N,), NaN at ids[0] and the
    dropped tail (the module docstring gives the layout)."""
    ids = torch.as_tensor(ids)
    n = len(ids)
    was_training = model.training
    model.eval()
    try:
        x, y = data.streams(ids, batch_size)
        x, y = x.to(device), y.to(device)
        losses, state = [], None
        for start in range(0, x.shape[0], seq_len):
            logits, state, _ = model(x[start:start + seq_len], state)
            losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          y[start:start + seq_len].reshape(-1),
                                          reduction="none").view(logits.shape[:2]))
        grid = torch.cat(losses).double().cpu().numpy()  # (L, B): grid[t, b] predicts ids[bL+t+1]
    finally:
        model.train(was_training)
    out = np.full(n, np.nan)
    out[1:grid.size + 1] = grid.T.reshape(-1)
    return out


def context_chars(n: int, batch_size: int) -> np.ndarray:
    """For each of n characters read as per_char_nats reads them, how many characters of
    its stream the model had read before predicting it (0 where nothing predicts it)."""
    L = (n - 1) // batch_size
    out = np.zeros(n, np.int64)
    if L >= 1:
        out[1:batch_size * L + 1] = np.arange(batch_size * L) % L + 1
    return out


# ---------------------------------------------------------------------------------------
# matching


class Matches(NamedTuple):
    pos: np.ndarray  # int64: index of each matched closer in the text, ascending
    dist: np.ndarray  # int64: pos − the index of its opener (> 0)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"pos": self.pos, "dist_chars": self.dist})


def _matches(pairs: list[tuple[int, int]]) -> Matches:
    """Matches from (closer, opener) index pairs, in the order of the closers."""
    a = np.array(pairs, np.int64).reshape(-1, 2)
    return Matches(a[:, 0], a[:, 0] - a[:, 1])


# a quote character, or a paragraph break: a '\n' ending a line of only whitespace
_QUOTE_TOKENS = re.compile(r'["\u201c\u201d]|\n[^\S\n]*\n')


def closing_quotes(text: str) -> Matches:
    """Closing dialogue quotes and their openers (rules in the module docstring)."""
    pairs, opener = [], -1  # index of the open quotation's opener, -1 if none
    for m in _QUOTE_TOKENS.finditer(text):
        i = m.start()
        ch = text[i]
        if ch == "\n":  # paragraph break
            opener = -1
        elif ch == "\u201c":
            opener = i
        elif opener >= 0:  # '"' or '”' closes
            pairs.append((i, opener))
            opener = -1
        elif ch == '"':
            opener = i
    return _matches(pairs)


# comments and literals (consumed whole, so their braces are not seen), or a brace
_C_TOKENS = re.compile(r"""/\*.*?(?:\*/|\Z)     # block comment, maybe unterminated
                           |//[^\n]*           # line comment
                           |"(?:\\.|[^"\\\n])*["\n]?   # string literal
                           |'(?:\\.|[^'\\\n])*['\n]?   # character literal
                           |[{}]""", re.DOTALL | re.VERBOSE)


def closing_braces(text: str) -> Matches:
    """Closing C braces and their openers (rules in the module docstring)."""
    pairs, stack = [], []
    for m in _C_TOKENS.finditer(text):
        i = m.start()
        ch = text[i]
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs.append((i, stack.pop()))
    return _matches(pairs)


# ---------------------------------------------------------------------------------------
# loss by distance


def _bin_masks(pos, dist, bins: Sequence[float], n: int):
    """(label, lo, hi, mask over the closers) per bin; checks the arguments."""
    pos, dist = np.asarray(pos, np.int64), np.asarray(dist, np.int64)
    if pos.shape != dist.shape or pos.ndim != 1:
        raise ValueError(f"pos and dist must be 1-D and of one length, got shapes "
                         f"{pos.shape} and {dist.shape}")
    if len(pos) and (pos.min() < 0 or pos.max() >= n):
        raise ValueError(f"pos runs from {pos.min()} to {pos.max()}, outside the {n} losses: "
                         "were the losses and the matches made from the same text?")
    edges = [float(b) for b in bins]
    if len(edges) < 2 or any(not lo < hi for lo, hi in pairwise(edges)):
        raise ValueError(f"bins must be at least two increasing edges, got {list(bins)}")
    out = []
    for lo, hi in pairwise(edges):
        label = f"[{lo:g}, {hi:g})"
        out.append((label, lo, hi, (dist >= lo) & (dist < hi)))
    return pos, out


def _sem(v: np.ndarray) -> float:
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan


def by_distance(nats: np.ndarray, pos, dist, bins: Sequence[float] = BINS) -> pd.DataFrame:
    """Per distance bin [lo, hi): closers in it, those with a finite loss, and the mean
    loss (nats) at them with its standard error."""
    nats = np.asarray(nats, np.float64)
    pos, masks = _bin_masks(pos, dist, bins, len(nats))
    loss = nats[pos]
    rows = []
    for label, lo, hi, m in masks:
        v = loss[m & np.isfinite(loss)]
        rows.append({"dist_chars": label, "lo_chars": lo, "hi_chars": hi,
                     "closers": int(m.sum()), "scored": len(v),
                     "mean_nats": float(v.mean()) if len(v) else math.nan,
                     "sem_nats": _sem(v)})
    return pd.DataFrame(rows)


def compare(nats_a: np.ndarray, nats_b: np.ndarray, pos, dist,
            bins: Sequence[float] = BINS) -> pd.DataFrame:
    """Per distance bin, over the closers where both losses are finite: each model's mean
    loss, the difference b − a with its paired standard error (nats/char), and the
    fraction of closers where a's loss is strictly lower."""
    a, b = np.asarray(nats_a, np.float64), np.asarray(nats_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the two models' losses differ in shape ({a.shape} vs {b.shape}): "
                         "read both over the same text")
    pos, masks = _bin_masks(pos, dist, bins, len(a))
    la, lb = a[pos], b[pos]
    both = np.isfinite(la) & np.isfinite(lb)
    rows = []
    for label, lo, hi, m in masks:
        k = m & both
        va, vb = la[k], lb[k]
        n = int(k.sum())
        rows.append({"dist_chars": label, "lo_chars": lo, "hi_chars": hi,
                     "closers": int(m.sum()), "scored": n,
                     "mean_nats_a": float(va.mean()) if n else math.nan,
                     "mean_nats_b": float(vb.mean()) if n else math.nan,
                     "diff_nats": float((vb - va).mean()) if n else math.nan,
                     "sem_diff_nats": _sem(vb - va),
                     "frac_a_better": float((va < vb).mean()) if n else math.nan})
    return pd.DataFrame(rows)
