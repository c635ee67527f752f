"""Hochreiter97's long-lag tasks as text (study/tasks.py): the target depends on the relevant
positions and on nothing else, every line has the configured lag, generation is
deterministic with the prefix property, the mask marks exactly the targets on any slice,
every embedded Reber line is in the grammar (checked by an acceptor written here), and
chance_nats matches the generated distributions."""

import math
import re
import time
from collections import Counter
from functools import cache

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from study import tasks
from study.tasks import TASKS

LAGS = {"adding": (3, 5, 20, 100), "temporal_order": (3, 5, 20, 100),
        "embedded_reber": (6, 20, 100)}
N_TARGET = {"adding": 2, "temporal_order": 1, "embedded_reber": 1}
NOISE = {"adding": "0123456789", "temporal_order": "abcd"}
RELEVANT = {"adding": "abcdefghij", "temporal_order": "XY", "embedded_reber": "TP"}


@cache
def text_of(task, lag, seed=0, chars=40_000):
    return tasks.generate(task, lag=lag, seed=seed, chars=chars)


def lines_of(task, lag, **kw):
    return text_of(task, lag, **kw).splitlines(keepends=True)


def split(task, line):
    """(input part, target, rest) of a full line, parsed here independently of the module."""
    if task == "embedded_reber":
        assert line.endswith("E\n")
        return line[:-3], line[-3], line[-2:]
    cue = line.index("=") + 1
    assert line[cue + N_TARGET[task]:] == "\n"
    return line[:cue], line[cue:cue + N_TARGET[task]], "\n"


def target_positions(task, text):
    """Indices of the target characters of a whole generated text, from the parse above."""
    out, start = [], 0
    for line in text.splitlines(keepends=True):
        inp, target, _ = split(task, line)
        out += range(start + len(inp), start + len(inp) + len(target))
        start += len(line)
    return np.array(out, dtype=int)


# --- an acceptor for the embedded Reber grammar, written from the state diagram ----------

REBER_EDGES = {(0, "T"): 1, (0, "P"): 2, (1, "S"): 1, (1, "X"): 3, (2, "T"): 2, (2, "V"): 4,
               (3, "X"): 2, (3, "S"): 5, (4, "P"): 3, (4, "V"): 5, (5, "E"): "end"}


def is_reber(word):
    if not word.startswith("B"):
        return False
    state = 0
    for symbol in word[1:]:
        if state == "end" or (state, symbol) not in REBER_EDGES:
            return False
        state = REBER_EDGES[state, symbol]
    return state == "end"


def is_embedded_reber(word):
    return (len(word) >= 4 and word[0] == "B" and word[1] in "TP" and word[-2] == word[1]
            and word[-1] == "E" and is_reber(word[2:-2]))


def test_acceptor_rejects_strings_outside_the_grammar():
    assert is_reber("BTXSE") and is_reber("BPVVE") and is_reber("BTSSXXTVVE")
    assert is_embedded_reber("BTBTXSETE") and is_embedded_reber("BPBTSSXXTVVEPE")
    for bad in ("BTSSPXSE", "BPTVVB", "BTXXVVSE", "BTXSEE", "TXSE", "BTXS"):
        assert not is_reber(bad)
    for bad in ("BTBTXSEPE", "BPBTXSETE", "BTBTXSSETE", "BXBTXSEXE", "BTBTXSET"):
        assert not is_embedded_reber(bad)


@pytest.mark.parametrize("lag", LAGS["embedded_reber"])
def test_every_embedded_reber_line_is_in_the_grammar(lag):
    lines = lines_of("embedded_reber", lag)
    bad = [x for x in lines if not is_embedded_reber(x.rstrip("\n"))]
    assert not bad, bad[:3]


def test_lag_6_is_the_classic_unsteered_grammar():
    """No steering at the minimum: the walk's first choice is a fair coin and short strings
    (lag 6, 'BTXSE'/'BPVVE' inside) occur with their classic probability 1/4 · 1/2 = 1/8."""
    lines = lines_of("embedded_reber", 6, chars=200_000)
    first = Counter(x[3] for x in lines)
    assert abs(first["T"] / len(lines) - 0.5) < 0.02
    short = sum(tasks.lag_of("embedded_reber", x) == 6 for x in lines) / len(lines)
    assert abs(short - 1 / 4) < 0.02  # walk TXS or PVV: three fair coins each, 2 × 1/8


# --- the target depends on the relevant positions only ------------------------------------

def replace(s, i, symbol):
    return s[:i] + symbol + s[i + 1:]


def other(alphabet, symbol, k=1):
    return alphabet[(alphabet.index(symbol) + k) % len(alphabet)]


@pytest.mark.parametrize("task", ["adding", "temporal_order"])
@pytest.mark.parametrize("lag", [5, 20])
def test_target_ignores_the_noise(task, lag):
    noise = NOISE[task]
    lines = lines_of(task, lag)
    for n, line in enumerate(lines):
        inp, target, _ = split(task, line)
        relevant = tasks.relevant_positions(task, inp)
        free = [i for i in range(len(inp) - 1) if i not in relevant]  # not the cue '='
        assert all(inp[i] in noise for i in free) and inp[-1] == "="
        assert tasks.target_of(task, inp) == target
        changed = inp
        for k, i in enumerate(free):  # all at once, each to a different noise symbol
            changed = replace(changed, i, other(noise, inp[i], 1 + k % (len(noise) - 1)))
        assert tasks.target_of(task, changed) == target
        if n < 40:  # one at a time, every position, every other noise symbol
            for i in free:
                for k in range(1, len(noise)):
                    assert tasks.target_of(task, replace(inp, i, other(noise, inp[i], k))) \
                        == target


@pytest.mark.parametrize("task", ["adding", "temporal_order"])
def test_target_depends_on_each_relevant_position(task):
    marks = RELEVANT[task]
    changed = Counter()
    lines = lines_of(task, 20)
    for line in lines:
        inp, target, _ = split(task, line)
        for which, i in enumerate(tasks.relevant_positions(task, inp)):
            assert inp[i] in marks
            for k in range(1, len(marks)):
                changed[which] += tasks.target_of(task, replace(inp, i, other(marks, inp[i], k))) \
                    != target
    # any change of one marker changes the order class / the sum
    assert changed[0] == changed[1] == len(lines) * (len(marks) - 1)


def test_embedded_reber_target_is_the_second_symbol_only():
    lines = lines_of("embedded_reber", 20)
    inners = [split("embedded_reber", x)[0][2:] for x in lines]
    for n, line in enumerate(lines):
        inp, target, _ = split("embedded_reber", line)
        assert tasks.relevant_positions("embedded_reber", inp) == [1]
        assert tasks.target_of("embedded_reber", inp) == target == inp[1]
        swapped = inp[:2] + inners[(n + 1) % len(inners)]  # all at once: another inner string
        assert tasks.target_of("embedded_reber", swapped) == target
        if n < 40:  # one at a time: each inner symbol to every other Reber symbol
            for i in range(2, len(inp)):
                for symbol in "BTPSXVE".replace(inp[i], ""):
                    assert tasks.target_of("embedded_reber", replace(inp, i, symbol)) == target
        assert tasks.target_of("embedded_reber", replace(inp, 1, other("TP", inp[1]))) != target


@pytest.mark.parametrize("task", TASKS)
def test_generator_writes_the_rule(task):
    for line in lines_of(task, LAGS[task][1]):
        inp, target, rest = split(task, line)
        assert tasks.target_of(task, inp) == target
        assert tasks.target_of(task, line) == target  # the rest of a full line is ignored


@pytest.mark.parametrize("task", ["adding", "temporal_order"])
@pytest.mark.parametrize("lag", [3, 5, 20, 100])
def test_marker_positions_lie_in_the_documented_ranges(task, lag):
    first, gap = Counter(), Counter()
    for line in lines_of(task, lag, chars=200_000):
        p1, p2 = tasks.relevant_positions(task, line)
        first[p1] += 1
        gap[p2 - p1] += 1
    assert set(first) == set(range(5))
    assert set(gap) == set(range(1, max(1, lag // 2) + 1))


# --- lags ------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_every_line_has_the_configured_lag(task):
    for lag in LAGS[task]:
        lags = np.array([tasks.lag_of(task, x) for x in lines_of(task, lag)])
        if task == "embedded_reber":
            assert lags.min() >= lag
            assert lags.min() == lag  # steering stops as soon as it may
            if lag > 6:
                assert 0.5 < (lags - lag).mean() < 5  # a few symbols over: the wait to exit
        else:
            assert (lags == lag).all()
            first = tasks.relevant_positions(task, lines_of(task, lag)[0])[0]
            assert lines_of(task, lag)[0].index("=") + 1 - first == lag


def test_lag_of_counts_from_the_first_relevant_position():
    assert tasks.lag_of("temporal_order", "XY=R\n") == 3
    assert tasks.lag_of("temporal_order", "abXcYd=R") == 5
    assert tasks.lag_of("adding", "cd=05\n") == 3
    assert tasks.lag_of("embedded_reber", "BTBTXSETE\n") == 6
    assert tasks.target_of("temporal_order", "abYcXd=") == "S"
    assert tasks.target_of("adding", "1j2j3=") == "18"
    assert tasks.target_of("adding", "a0a=") == "00"


# --- determinism -------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_generation_is_deterministic_with_the_prefix_property(task):
    lag = LAGS[task][1]
    small = tasks.generate(task, lag=lag, seed=7, chars=1234)
    assert small == tasks.generate(task, lag=lag, seed=7, chars=1234)
    assert small != tasks.generate(task, lag=lag, seed=8, chars=1234)
    assert small != tasks.generate(task, lag=lag + 1, seed=7, chars=1234)
    assert small.endswith("\n") and len(small) >= 1234
    assert len(small) - len(small.splitlines(keepends=True)[-1]) < 1234  # stops at once
    for chars in (1235, 5000, 200_000):  # crosses the block boundary
        assert tasks.generate(task, lag=lag, seed=7, chars=chars).startswith(small)
    assert tasks.generate(task, lag=lag, seed=7, chars=0) == ""
    assert tasks.generate(task, lag=lag, seed=7, chars=1).count("\n") == 1


@pytest.mark.parametrize("task", TASKS)
def test_a_million_characters_is_fast(task):
    start = time.perf_counter()
    text = tasks.generate(task, lag=tasks.MIN_LAG[task], seed=1, chars=1_000_000)
    assert time.perf_counter() - start < 2.0
    assert len(text) >= 1_000_000


# --- the mask -----------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_mask_marks_exactly_the_targets(task):
    for lag in LAGS[task]:
        text = text_of(task, lag)
        mask = tasks.target_mask(task, text)
        assert mask.dtype == bool and mask.shape == (len(text),)
        assert mask.sum() == text.count("\n") * N_TARGET[task]
        assert (np.flatnonzero(mask) == target_positions(task, text)).all()


SLICE_TEXT = {task: text_of(task, tasks.MIN_LAG[task] + 2, chars=3000) for task in TASKS}


def identifiable(task, text, t, i, j):
    """Whether target t can be told from text[i:j]: by its own letter (temporal_order), by
    an 'E' next to it (embedded_reber), by its line's '=' or '\n' (adding)."""
    if task == "temporal_order":
        return True
    if task == "embedded_reber":
        return t - 1 >= i or t + 1 < j
    return i <= text.rindex("=", 0, t) or text.index("\n", t) < j


def check_slice(task, i, j):
    text = SLICE_TEXT[task]
    full = tasks.target_mask(task, text)
    part = tasks.target_mask(task, text[i:j])
    assert part.dtype == bool and part.shape == (len(text[i:j]),)
    assert not (part & ~full[i:j]).any()  # marks nothing the full text does not
    expected = [t for t in np.flatnonzero(full[i:j]) + i if identifiable(task, text, t, i, j)]
    assert (np.flatnonzero(part) + i).tolist() == expected  # and every target it can tell


@pytest.mark.parametrize("task", TASKS)
def test_mask_of_tiny_slices(task):
    for i in range(400):
        for width in range(4):
            check_slice(task, i, i + width)


@pytest.mark.parametrize("task", TASKS)
@settings(max_examples=150, deadline=None)
@given(i=st.integers(0, 3000), width=st.integers(0, 400))
@example(i=0, width=3000)
def test_mask_of_any_slice_agrees_with_the_full_mask(task, i, width):
    check_slice(task, i, i + width)


@pytest.mark.parametrize("task", TASKS)
@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("=\nEXYQTPabc09é中😀"), max_size=40))
def test_mask_never_crashes(task, text):
    mask = tasks.target_mask(task, text)
    assert mask.dtype == bool and mask.shape == (len(text),)


# --- chance ------------------------------------------------------------------------------

def entropy(counter):
    p = np.array(list(counter.values()), dtype=float)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


def test_chance_values():
    sums = Counter(a + b for a in range(10) for b in range(10))
    assert tasks.chance_nats("adding") == pytest.approx(entropy(sums) / 2, abs=1e-12)
    assert tasks.chance_nats("adding") == pytest.approx(1.3969, abs=1e-4)
    assert tasks.chance_nats("temporal_order") == pytest.approx(math.log(4))
    assert tasks.chance_nats("embedded_reber") == pytest.approx(math.log(2))


@pytest.mark.parametrize("task", TASKS)
def test_chance_matches_the_generated_targets(task):
    """Per target character: the entropy of the targets, and nothing outside the relevant
    positions informs them (the target given the line's length has the same entropy)."""
    lines = lines_of(task, LAGS[task][1], chars=400_000)
    targets = [split(task, x)[1] for x in lines]
    per_char = entropy(Counter(targets)) / N_TARGET[task]
    assert per_char == pytest.approx(tasks.chance_nats(task), abs=0.01)
    by_length = Counter(len(x) for x in lines)
    given_length = sum(n / len(lines) * entropy(Counter(t for x, t in zip(lines, targets,
                                                                            strict=True)
                                                     if len(x) == length))
                       for length, n in by_length.items() if n > 500)
    covered = sum(n for n in by_length.values() if n > 500) / len(lines)
    assert given_length / covered / N_TARGET[task] == pytest.approx(tasks.chance_nats(task),
                                                                    abs=0.03)


@pytest.mark.parametrize("task, partial", [("temporal_order", math.log(2)),
                                           ("adding", math.log(10) / 2)])
def test_keeping_only_the_nearer_marker_leaves_the_documented_loss(task, partial):
    lines = lines_of(task, 20, chars=400_000)
    by_second = {}
    for x in lines:
        p2 = tasks.relevant_positions(task, x)[1]
        by_second.setdefault(x[p2], Counter())[split(task, x)[1]] += 1
    h = sum(sum(c.values()) * entropy(c) for c in by_second.values()) / len(lines)
    assert h / N_TARGET[task] == pytest.approx(partial, abs=0.02)


# --- errors and descriptions -----------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda t: tasks.generate(t, lag=20, seed=0, chars=10), lambda t: tasks.target_mask(t, "x"),
    lambda t: tasks.target_of(t, "XY="), lambda t: tasks.relevant_positions(t, "XY="),
    lambda t: tasks.chance_nats(t), lambda t: tasks.lag_of(t, "XY=R"),
    lambda t: tasks.describe(t, 20)])
def test_unknown_task_names_the_valid_ones(call):
    with pytest.raises(ValueError) as err:
        call("addding")
    assert "'addding'" in str(err.value)
    assert all(t in str(err.value) for t in TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_too_small_lag_names_the_minimum(task):
    low = tasks.MIN_LAG[task] - 1
    for call in (lambda: tasks.generate(task, lag=low, seed=0, chars=10),
                 lambda: tasks.describe(task, low)):
        with pytest.raises(ValueError, match=rf"lag {low}\b.*>= {tasks.MIN_LAG[task]}"):
            call()
    tasks.generate(task, lag=tasks.MIN_LAG[task], seed=0, chars=10)
    for bad in (2.5, "20", True):
        with pytest.raises(ValueError, match="lag"):
            tasks.generate(task, lag=bad, seed=0, chars=10)
    with pytest.raises(ValueError, match="seed -1"):
        tasks.generate(task, lag=20, seed=-1, chars=10)


@pytest.mark.parametrize("task", TASKS)
def test_malformed_lines_are_refused(task):
    for bad in ("", "abcd=", "XXY=Q\n", "1a2=05", "BXBTXSEXE"):
        with pytest.raises(ValueError):
            tasks.lag_of(task, bad)


@pytest.mark.parametrize("task", TASKS)
def test_describe_names_task_lag_and_chance(task):
    text = tasks.describe(task, 20)
    assert task in text and "20" in text and f"{tasks.chance_nats(task):.3f}" in text
    assert re.search(r"Hochreiter97 exp\. \d", text)
