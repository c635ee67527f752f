"""Hochreiter97's long-time-lag tasks as character corpora: `adding`, `temporal_order`,
`embedded_reber`.

Source: Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997
(Hochreiter97), experiments 1, 4 and 6a. There a network reads one symbol per step and only
its output at the end of a sequence is scored. Here each sequence is one line of text and a
next-character model reads a stream of lines; the line's *target characters* are a function
of characters `lag` positions earlier and of nothing nearer, so a model predicts them better
than chance only if it carries that information across the lag. Evaluation scores the target
characters only (`target_mask`); every other character is noise or format.

Common to the three tasks
-------------------------
- A text is a stream of lines, each ending in '\\n'; one line is one example:
  input part, target characters, then '\\n' (embedded_reber: a final 'E' before it).
- The *input part* is everything before the first target character (for adding and
  temporal_order it ends with the cue '='). `target_of(task, input_part)` is the rule; the
  generator calls it on every line it writes, so the two cannot disagree.
- `lag` = (index of the first target character) − (index of the first relevant position),
  both counted in the line. `relevant_positions` are the indices the target depends on.
- `generate` draws from one numpy Generator seeded with SeedSequence([crc32(task), lag,
  seed]), a block of ⌊65536 / (lag + 8)⌋ lines at a time (a size fixed by the lag alone),
  and stops after the first line that brings the text to ≥ `chars` characters: the same
  arguments give the same text, a larger `chars` a longer text with the same start.
- `chance_nats` = the mean loss per target character, in nats, of the best model that knows
  the format and every distribution but not the relevant symbols: the entropy of the target
  given the rest of the line, divided by the number of target characters (with teacher
  forcing, H(t1) + H(t2 | t1) = H(t1 t2), so this is the mean over the target characters).
- `target_mask` reads only the text, so it works on any slice of a generated text: a
  target is recognised by its own character (temporal_order) or by a neighbour ('=' before,
  '\\n' after; 'E' on either side for embedded_reber); a target whose identifying neighbours
  were cut off by the slice is left unmarked.
- Characters: temporal_order a b c d X Y = Q R S U '\\n' (12); adding 0-9 a-j = '\\n' (22);
  embedded_reber B T P S X V E '\\n' (8). Only ASCII; no '\\r'.

temporal_order: Hochreiter97 experiment 6a ("two relevant, widely separated symbols")
-----------------------------------------------------------------------------------------
Original: a sequence of length 100–110 starts with E, ends with the trigger B, and is noise
from {a, b, c, d} except at t1 ∈ [10, 20] and t2 ∈ [50, 60], each X or Y; the class is
output after the trigger: XX → Q, XY → R, YX → S, YY → U (letters as remembered).
Ours:   <noise over a b c d, X or Y at p1 and p2> '=' <class> '\\n'
        p1 uniform in {0..4}; p2 = p1 + d, d uniform in {1..max(1, ⌊lag/2⌋)}; the noise
        part has n = p1 + lag − 1 characters, so the class sits at n + 1 and lag = n + 1 − p1
        exactly. The second marker lies ≥ ⌈lag/2⌉ before the target. Minimum lag 3
        ("XY=R"). Classes as above (Q R S U), markers and noise uniform and independent.
        example, lag 10:  bXdbXbbbbb=Q   (X at 1, X at 4, '=' at 10, Q at 11)
Differs: no start/end symbols ('=' is the trigger, '\\n' ends the line); positions scale
with the lag instead of [10, 20] / [50, 60]; the line length varies by p1 only.
chance_nats = ln 4 = 1.386 (4 classes, uniform, independent of noise and positions). A
model that keeps only the second marker, which is the nearer one, reaches ln 2 = 0.693.

adding: Hochreiter97 experiment 4 ("adding problem"), adapted to characters
---------------------------------------------------------------------------
Original: a sequence of pairs (x ∈ [−1, 1], marker), length T to T + T/10; one of the
first ten pairs and one of the first T/2 − 1 are marked; the target at the end is
0.5 + (x1 + x2)/4, correct if the absolute error is below 0.04 (T = 100, 500, 1000).
Ours:   <noise digits 0-9, marked digits at p1 and p2> '=' <sum as two digits> '\\n'
        a marked digit v is written as the letter chr(ord('a') + v), a..j = 0..9; noise
        and marked values uniform over 0..9; the target is their sum, zero-padded to two
        digits ("00".."18"). Positions exactly as in temporal_order (p1 ∈ {0..4},
        d ∈ {1..max(1, ⌊lag/2⌋)}, n = p1 + lag − 1), so lag = distance from the first
        marked digit to the first target digit. Minimum lag 3 ("cd=05").
        example, lag 10:  6i42c80785=10   (i=8 at 1, c=2 at 4, '=' at 10, "10" at 11-12)
Differs: discrete digits instead of reals, so the sum is classified exactly rather than
regressed within 0.04; no −1 markers at the ends; positions scale with the lag.
chance_nats = H(S)/2 with S = A + B, A, B uniform on 0..9, P(S = s) = (10 − |s − 9|)/100,
s = 0..18: H(S) = 2.7938 nats, so chance_nats = 1.3969. Keeping only the second (nearer)
marked digit leaves H(A)/2 = ln(10)/2 = 1.151.

embedded_reber: Hochreiter97 experiment 1 (after Smith & Zipser 1989; Cleeremans,
Servan-Schreiber & McClelland 1989; Fahlman 1991)
------------------------------------------------------------------------------------------
Original: strings B T <Reber string> T E or B P <Reber string> P E; the net predicts the
next symbol at every step; the hard one is the penultimate symbol, which repeats the 2nd.
The Reber graph (state: symbol → next state), entered after its own B, left by E:
        0: T→1, P→2    1: S→1, X→3    2: T→2, V→4    3: X→2, S→5    4: P→3, V→5    5: E
Ours:   'B' <a> 'B' <walk> 'E' <a> 'E' '\\n'   with a ∈ {T, P} uniform, B<walk>E the
        inner Reber string. Only the penultimate a is a target (every other symbol is
        format or a step of the grammar's walk, not long-lag). lag = len(walk) + 3 = len(inner) + 1.
        Steering: the walk takes an exit transition (S from 3, V from 4, into state 5) only
        if the line's lag is then ≥ `lag`; otherwise it takes the other one (X from 3,
        P from 4). Every other choice is a fair coin. So every line is in the grammar and
        lag_of(line) ≥ lag, exceeding it by a few symbols (the walk's wait for an exit:
        for lag 20 or 100 the excess has mean 2.8, 90th percentile 7, 99th 15).
        The shortest lines (e.g. BTBTXSETE, BPBPVVEPE) have lag 6, the minimum; lag 6 never
        steers: it is the classic grammar (lag mean 9.0, median 8, 99th percentile 21).
        example, lag 10:  BTBTXXTTVVETE   (T at 1, inner BTXXTTVVE at 2-10, T at 11)
Differs: one target per string instead of a prediction at every step; long lags by steering.
chance_nats = ln 2 = 0.693 (a is a fair coin drawn independently of the inner string).
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np

TASKS: tuple[str, ...] = ("adding", "temporal_order", "embedded_reber")
MIN_LAG = {"adding": 3, "temporal_order": 3, "embedded_reber": 6}
TARGET_CHARS = {"adding": 2, "temporal_order": 1, "embedded_reber": 1}  # per line
CUE = "="
FIRST_POSITIONS = 5  # the first marker sits at index 0..4 (adding, temporal_order)
_BLOCK_CHARS = 1 << 16

ORDER_NOISE, MARKERS = "abcd", "XY"
ORDER_CLASS = {"XX": "Q", "XY": "R", "YX": "S", "YY": "U"}
DIGITS, MARKED_DIGITS = "0123456789", "abcdefghij"  # marked v is written MARKED_DIGITS[v]
REBER = {0: (("T", 1), ("P", 2)), 1: (("S", 1), ("X", 3)), 2: (("T", 2), ("V", 4)),
         3: (("X", 2), ("S", 5)), 4: (("P", 3), ("V", 5))}  # option 1 of 3 and 4 exits
REBER_END = 5
_MARKER_RE = {"temporal_order": re.compile("[XY]"), "adding": re.compile("[a-j]")}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")


def _check_lag(task: str, lag: int) -> None:
    _check_task(task)
    ok = isinstance(lag, int | np.integer) and not isinstance(lag, bool)
    if not ok or lag < MIN_LAG[task]:
        raise ValueError(f"lag {lag!r} is invalid for {task!r}: valid lags are integers "
                         f">= {MIN_LAG[task]}, the task's minimum")


# --- the rules: input part -> target ------------------------------------------------------

def _markers(task: str, line: str) -> list[re.Match]:
    found = list(_MARKER_RE[task].finditer(line))
    if len(found) != 2:
        what = "markers X/Y" if task == "temporal_order" else "marked digits a-j"
        raise ValueError(f"{task} line {line!r} has {len(found)} {what}, expected 2")
    return found


def _order_rule(inp: str) -> str:
    first, second = _markers("temporal_order", inp)
    return ORDER_CLASS[first.group() + second.group()]


def _adding_rule(inp: str) -> str:
    first, second = _markers("adding", inp)
    total = MARKED_DIGITS.index(first.group()) + MARKED_DIGITS.index(second.group())
    return f"{total:02d}"


def _reber_rule(inp: str) -> str:
    if len(inp) < 2 or inp[0] != "B" or inp[1] not in "TP":
        raise ValueError(f"embedded_reber line {inp!r} does not start with BT or BP")
    return inp[1]


_RULES = {"temporal_order": _order_rule, "adding": _adding_rule, "embedded_reber": _reber_rule}


def target_of(task: str, line: str) -> str:
    """The target string of a line from its input part (the line up to its first target
    character); the rule reads only the relevant positions, so a full line works too."""
    _check_task(task)
    return _RULES[task](line)


def relevant_positions(task: str, line: str) -> list[int]:
    """Indices in the input part (equally in the full line) that the target depends on."""
    _check_task(task)
    if task == "embedded_reber":
        _reber_rule(line)
        return [1]
    return [m.start() for m in _markers(task, line)]


def lag_of(task: str, line: str) -> int:
    """Distance from the first relevant position to the first target character of a full
    line (with or without its '\\n')."""
    _check_task(task)
    body = line[:-1] if line.endswith("\n") else line
    if task == "embedded_reber":
        if len(body) < 9 or body[-1] != "E" or body[-3] != "E":
            raise ValueError(f"not a full embedded_reber line: {line!r}")
        first_target = len(body) - 2
    else:
        first_target = body.find(CUE) + 1
        if first_target == 0 or len(body) != first_target + TARGET_CHARS[task]:
            raise ValueError(f"not a full {task} line: {line!r}")
    return first_target - relevant_positions(task, body)[0]


def chance_nats(task: str) -> float:
    """Mean loss per target character (nats) without the long-lag information."""
    _check_task(task)
    if task == "adding":
        p = np.array([10 - abs(s - 9) for s in range(19)]) / 100.0
        return float(-(p * np.log(p)).sum() / 2)
    return math.log(4) if task == "temporal_order" else math.log(2)


def describe(task: str, lag: int) -> str:
    _check_lag(task, lag)
    chance = f"chance {chance_nats(task):.3f} nats per target character"
    if task == "temporal_order":
        return (f"temporal_order (Hochreiter97 exp. 6a): lines of noise a-d with two markers "
                f"X/Y; after '=' one letter names their order (XX/XY/YX/YY -> Q/R/S/U), "
                f"{lag} characters after the first marker; {chance}.")
    if task == "adding":
        return (f"adding (Hochreiter97 exp. 4): lines of noise digits with two marked digits "
                f"written a-j (=0-9); after '=' their sum as two digits, the first {lag} "
                f"characters after the first marked one; {chance}.")
    return (f"embedded_reber (Hochreiter97 exp. 1): one embedded Reber string per line, "
            f"B a <Reber string> a E with a in T/P; the penultimate a repeats the 2nd symbol, "
            f"at least {lag} characters later (inner string steered to length >= {lag - 1}); "
            f"{chance}.")


# --- generation -------------------------------------------------------------------------

def _codes(symbols: str) -> np.ndarray:
    return np.frombuffer(symbols.encode("ascii"), dtype=np.uint8)


def _marked_lines(task: str, rng: np.random.Generator, lag: int, m: int) -> list[str]:
    """m lines of adding or temporal_order: noise, two markers, cue, target, newline."""
    noise, marks = (DIGITS, MARKED_DIGITS) if task == "adding" else (ORDER_NOISE, MARKERS)
    p1 = rng.integers(0, FIRST_POSITIONS, m)
    p2 = p1 + rng.integers(1, max(1, lag // 2) + 1, m)
    grid = _codes(noise)[rng.integers(0, len(noise), (m, FIRST_POSITIONS + lag - 1))]
    rows = np.arange(m)
    grid[rows, p1] = _codes(marks)[rng.integers(0, len(marks), m)]
    grid[rows, p2] = _codes(marks)[rng.integers(0, len(marks), m)]
    rule, width = _RULES[task], grid.shape[1]
    raw = grid.tobytes().decode("ascii")
    lines = []
    for i, n in enumerate((p1 + lag - 1).tolist()):
        inp = raw[i * width:i * width + n] + CUE
        lines.append(inp + rule(inp) + "\n")
    return lines


_SYMBOL = np.zeros((REBER_END + 1, 2), np.uint8)  # state, option -> symbol (0: finished)
_NEXT = np.full((REBER_END + 1, 2), REBER_END)  # state, option -> next state
for _state, _options in REBER.items():
    for _k, (_sym, _next) in enumerate(_options):
        _SYMBOL[_state, _k], _NEXT[_state, _k] = ord(_sym), _next


def _reber_lines(rng: np.random.Generator, lag: int, m: int) -> list[str]:
    """m embedded Reber lines, the inner walks run side by side, one step per iteration."""
    second = rng.integers(0, 2, m)
    state = np.zeros(m, np.int64)
    steps = []
    while (state != REBER_END).any():
        option = rng.integers(0, 2, m)
        if len(steps) + 4 < lag:  # exiting now would give lag len(walk) + 3 < lag
            option[(state == 3) | (state == 4)] = 0
        steps.append(_SYMBOL[state, option])
        state = _NEXT[state, option]
    walks = np.stack(steps, axis=1)  # (m, longest walk), 0 after a walk's end
    lengths = (walks != 0).sum(axis=1).tolist()
    raw, width = walks.tobytes().decode("ascii"), walks.shape[1]
    lines = []
    for i, (a, n) in enumerate(zip(second.tolist(), lengths, strict=True)):
        inp = "B" + "TP"[a] + "B" + raw[i * width:i * width + n] + "E"
        lines.append(inp + _reber_rule(inp) + "E\n")
    return lines


def generate(task: str, *, lag: int, seed: int, chars: int) -> str:
    """Whole lines until the text has at least `chars` characters; deterministic from
    (task, lag, seed, chars), and a larger `chars` extends a smaller one's text."""
    _check_lag(task, lag)
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed {seed!r} is invalid: valid seeds are integers >= 0")
    rng = np.random.default_rng(np.random.SeedSequence([zlib.crc32(task.encode()),
                                                        int(lag), int(seed)]))
    block = max(1, _BLOCK_CHARS // (lag + 8))
    out: list[str] = []
    total = 0
    while total < chars:
        if task == "embedded_reber":
            lines = _reber_lines(rng, lag, block)
        else:
            lines = _marked_lines(task, rng, lag, block)
        ends = total + np.cumsum([len(s) for s in lines])
        if ends[-1] >= chars:
            lines = lines[:int(np.searchsorted(ends, chars)) + 1]
        out.extend(lines)
        total = int(ends[len(lines) - 1])
    return "".join(out)


# --- the mask -----------------------------------------------------------------------------

def _shift(c: np.ndarray, k: int) -> np.ndarray:
    """out[i] = c[i - k], or 0 where i - k falls outside the text."""
    out = np.zeros_like(c)
    if 0 < k < len(c):
        out[k:] = c[:-k]
    elif 0 < -k < len(c):
        out[:k] = c[-k:]
    return out


def target_mask(task: str, text: str) -> np.ndarray:
    """bool (len(text),): True at every target character identifiable from `text` alone."""
    _check_task(task)
    c = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point per char
    if task == "temporal_order":
        return np.isin(c, _codes("".join(ORDER_CLASS.values())))
    if task == "embedded_reber":
        e = ord("E")
        return np.isin(c, _codes("TP")) & ((_shift(c, 1) == e) | (_shift(c, -1) == e))
    cue, newline = ord(CUE), ord("\n")
    digit = (c >= ord("0")) & (c <= ord("9"))
    after_cue = (_shift(c, 1) == cue) | ((_shift(c, 2) == cue) & (_shift(digit, 1) != 0))
    before_newline = (_shift(c, -1) == newline) | ((_shift(c, -2) == newline)
                                                   & (_shift(digit, -1) != 0))
    return digit & (after_cue | before_newline)
