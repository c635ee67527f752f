"""Probes: concepts on handcrafted strings, planted units found, exact saturation, and the
error flow against explicit differentiation."""

import ast
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from study import probes
from study.config import ModelConfig, ProbesConfig
from study.model import CharLM
from study.probes import concepts, figures
from tests import reference


def bits(a) -> str:
    return "".join(str(int(v)) for v in a)


# ---------------------------------------------------------------------------------------
# concepts


def test_quotes_and_line_position():
    text = 'say "hi"\nok "a\nb" x'
    assert bits(concepts.in_quotes(text)) == "0000111000001111000"
    assert concepts.line_position(text).tolist() == \
        [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]
    assert concepts.line_position("ab\ncd\r\ne").tolist() == [1, 2, 0, 1, 2, 3, 0, 1]
    # a quotation over two paragraphs (CRLF, as in War and Peace): reopened, closed once
    two = '"a\r\n\r\n"b" c'
    assert bits(concepts.in_quotes(two)) == "11111011000"


@pytest.mark.parametrize("src,comment,string", [
    # a block comment holding a line comment and a string: all comment, no string
    ('a /* x // "y" */ b', "001111111111111100", "000000000000000000"),
    # a line comment holding a block-comment opener ends at the newline
    ("a // b /* c\nd", "0011111111100", "0000000000000"),
    # comment markers inside a string are string, not comment
    ('s = "/* no */";', "000000000000000", "000011111111100"),
    # an escaped quote does not end the string; a quote in a char literal starts none
    ('"a\\"b" c \'"\' d', "00000000000000", "11111000000000"),
    # C comments do not nest: the first */ closes
    ("/* a /* b */ c */", "11111111111100000", "00000000000000000"),
])
def test_c_lexer_on_handcrafted_strings(src, comment, string):
    assert bits(concepts.in_comment(src)) == comment
    assert bits(concepts.in_string(src)) == string


def test_depths_if_condition_and_indentation():
    src = "if (a(b)) {\n\tx = (1);\n}"
    assert bits(concepts.paren_depth(src)) == "00011221000000000110000"
    assert bits(concepts.brace_depth(src)) == "00000000001111111111110"
    assert bits(concepts.in_if_condition(src)) == "00011111000000000000000"
    assert concepts.indentation("ab\n\t  x\n    y").tolist() == \
        [0, 0, 0, 10, 10, 10, 10, 10, 4, 4, 4, 4, 4]
    # `if` must be a word: no condition in elif_(x) or gif(x)
    assert not concepts.in_if_condition("gif(x); elif_(y)").any()


def test_every_concept_is_registered_with_a_kind():
    assert set(concepts.CONCEPTS) >= {"in_quotes", "line_position", "in_comment", "in_string",
                                      "brace_depth", "paren_depth", "indentation",
                                      "in_if_condition"}
    for c in concepts.CONCEPTS.values():
        assert c.kind in ("binary", "continuous") and c.about


# ---------------------------------------------------------------------------------------
# planted units


def synthetic_prose(n_lines=80, seed=0) -> str:
    rng = random.Random(seed)
    words = ["the", "old", "prince", "said", "well", "and", "war", "peace", "she"]
    lines, quoted = [], False
    for _ in range(n_lines):
        line = []
        for _ in range(rng.randint(3, 12)):
            w = rng.choice(words)
            if rng.random() < 0.12:
                w = '"' + w
                quoted = not quoted
            line.append(w)
        lines.append(" ".join(line))
    text = "\n".join(lines) + "\n"
    return text


def planted_model(vocab: str):
    """An LSTM whose unit 0 counts characters since the last newline and whose unit 1
    flips sign at every double quote; units 2.. are random."""
    H, V = 6, len(vocab)
    torch.manual_seed(0)
    model = CharLM(V, ModelConfig(cell="lstm", hidden_size=H, num_layers=1))
    layer = model.layers[0]
    nl, q = vocab.index("\n"), vocab.index('"')
    with torch.no_grad():
        for p in (layer.W, layer.R, layer.b):
            p.uniform_(-0.5, 0.5)

        def col(gate, unit):
            return layer.cell.blocks.index(gate) * H + unit

        for unit in (0, 1):
            for gate in "ifoz":
                layer.W[:, col(gate, unit)] = 0
                layer.R[:, col(gate, unit)] = 0
                layer.b[col(gate, unit)] = 0
        # unit 0: c += 0.02 per character, reset at a newline
        layer.b[col("i", 0)], layer.b[col("o", 0)] = 10, 10
        layer.b[col("f", 0)], layer.W[nl, col("f", 0)] = 10, -20
        layer.b[col("z", 0)], layer.W[nl, col("z", 0)] = 0.02, -0.02
        # unit 1: at a quote, forget and write z = −sign(h') (first quote: +1)
        layer.b[col("i", 1)], layer.W[q, col("i", 1)] = -10, 20
        layer.b[col("f", 1)], layer.W[q, col("f", 1)] = 10, -20
        layer.b[col("z", 1)], layer.R[1, col("z", 1)] = 3, -20
        layer.b[col("o", 1)] = 10
    return model


def test_planted_units_are_ranked_first():
    text = synthetic_prose()
    vocab = "".join(sorted(set(text)))
    model = planted_model(vocab)
    ids = torch.tensor([vocab.index(c) for c in text])
    acts = probes.read(model, ids, lambda t: "".join(vocab[int(i)] for i in t),
                       ProbesConfig(streams=1, warmup=0))
    scores = probes.unit_scores(acts, ["line_position", "in_quotes"])
    best = probes.best_units(scores, 1).set_index("concept")
    assert best.loc["line_position", "unit"] == 0 and best.loc["line_position", "score"] > 0.9
    assert best.loc["in_quotes", "unit"] == 1 and best.loc["in_quotes", "score"] > 0.99
    # ahead of every other unit (which read the flip-flop through R and partly mirror it)
    for concept, unit in (("line_position", 0), ("in_quotes", 1)):
        sub = scores[scores.concept == concept]
        assert sub[sub.unit == unit].score.max() > sub[sub.unit != unit].score.max() + 0.02


def test_saturation_fractions_of_a_hand_set_gate_are_exact():
    vocab = "abc"
    text = "aabcbaaacb" * 7
    model = CharLM(3, ModelConfig(cell="lstm", hidden_size=2, num_layers=1))
    layer = model.layers[0]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        f0 = layer.cell.blocks.index("f") * 2
        layer.W[0, f0], layer.W[1, f0] = 10, -10  # 'a' opens the gate, 'b' closes it
    ids = torch.tensor([vocab.index(c) for c in text])
    acts = probes.read(model, ids, lambda t: "".join(vocab[int(i)] for i in t),
                       ProbesConfig(streams=1, warmup=0))
    table = probes.saturation_table(acts).set_index(["gate", "unit"])
    assert table.loc[("f", 0), "frac_right"] == pytest.approx(text.count("a") / len(text))
    assert table.loc[("f", 0), "frac_left"] == pytest.approx(text.count("b") / len(text))
    for gate in ("i", "o"):  # σ(0) = 0.5: never saturated
        assert table.loc[(gate, 0), "frac_right"] == 0 == table.loc[(gate, 0), "frac_left"]
    m = probes.saturation_metrics(probes.saturation_table(acts))
    assert m["sat.L1.f.units_right_gt50pct"] == 0 and m["sat.L1.i.right_mean"] == 0


def _saturation_of_a_random_model(cell, init_range, chars, **probe_settings):
    text = synthetic_prose(chars)
    vocab = "".join(sorted(set(text)))
    torch.manual_seed(0)
    model = CharLM(len(vocab), ModelConfig(cell=cell, hidden_size=8, num_layers=1,
                                           init_range=init_range))
    ids = torch.tensor([vocab.index(c) for c in text])
    acts = probes.read(model, ids, lambda t: "".join(vocab[int(i)] for i in t),
                       ProbesConfig(streams=1, warmup=0, **probe_settings))
    return probes.saturation_table(acts)


def test_binary_gates_show_saturation_by_construction():
    table = _saturation_of_a_random_model("binary", 1.0, 20)
    np.testing.assert_allclose(table.frac_left + table.frac_right, 1.0)


def test_gru_update_gate_convention_is_selectable():
    a = _saturation_of_a_random_model("gru", 2.0, 10, gru_update="pytorch")
    b = _saturation_of_a_random_model("gru", 2.0, 10, gru_update="charrnn")
    assert set(a.gate) == {"r", "u"} and set(b.gate) == {"r", "z (char-rnn: 1-u)"}
    u, z = a[a.gate == "u"], b[b.gate != "r"]
    np.testing.assert_allclose(u.frac_left.values, z.frac_right.values)  # z = 1 − u


# ---------------------------------------------------------------------------------------
# error flow


@pytest.mark.parametrize("engine", ["fused", "torch"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole"])
def test_error_flow_equals_explicit_differentiation(cell, engine):
    V, H, q_max, batch, warm = 7, 5, 9, 3, 4
    torch.manual_seed(0)
    model = CharLM(V, ModelConfig(cell=cell, hidden_size=H, num_layers=2, init_range=0.5,
                                  engine=engine))
    model.double()
    ids = torch.randint(0, V, (200,))
    flow = probes.error_flow(model, ids, q_max, batch, warmup=warm)
    # the same windows, unrolled naively, each step's h and c kept for autograd
    span = warm + q_max + 2
    starts = np.linspace(0, max(0, len(ids) - span - 1), batch).astype(int)
    seqs = torch.stack([ids[s:s + span] for s in starts], 1)
    with torch.no_grad():
        _, state, _ = model(seqs[:warm])
    inp = F.one_hot(seqs[warm:warm + q_max + 1], V).double()
    per_layer = []
    for layer, (s0, c0) in zip(model.layers, state, strict=True):
        hs, cs = reference.run(cell, layer, inp, s0, c0, steps=True)
        for t in hs + cs:
            t.retain_grad()
        per_layer.append((hs, cs))
        inp = torch.stack(hs)
    logits = model.decoder(inp[-1])
    F.cross_entropy(logits, seqs[warm + q_max + 1], reduction="sum").backward()
    for l, (hs, cs) in enumerate(per_layer, 1):
        for kind, steps in (("h", hs), ("c", cs)):
            if not steps:
                continue
            want = [steps[-1 - q].grad.norm(dim=1).mean().item() for q in range(q_max + 1)]
            got = flow[(flow.layer == l) & (flow.state == kind)].sort_values("q").grad_norm
            np.testing.assert_allclose(got.values, want, rtol=1e-9, atol=1e-12)


def test_rnn_error_flow_decays_faster_than_lstm_after_training(tmp_path):
    from study import config, data, train

    p = tmp_path / "prose.txt"
    p.write_text(synthetic_prose(400, seed=1))
    decay = {}
    for cell in ("rnn", "lstm"):
        cfg = config.updated(config.load(None), {
            "data.path": str(p), "model.cell": cell, "model.hidden_size": 32,
            "model.num_layers": 1, "train.batch_size": 16, "train.seq_len": 40,
            "train.epochs": 4, "train.patience": None, "train.sample_chars": 0,
            "probes.enabled": False, "tracking.enabled": False})
        corpus = data.load_corpus(cfg.data)
        res = train.train(cfg, corpus, progress=False)
        assert res.status == "finished"
        flow = probes.error_flow(res.model, corpus.splits["train"], 40, 16)
        h = flow[(flow.layer == 1) & (flow.state == "h")].set_index("q").grad_norm
        decay[cell] = math.log(h[40] / h[1]) / 39  # mean log-change per step back
    assert decay["rnn"] < decay["lstm"]


# ---------------------------------------------------------------------------------------
# figures: a run's own, or drawn into the report's axes


SAT = pd.DataFrame({"layer": [1, 1, 2, 2], "gate": ["f", "i", "f", "i"], "unit": [0, 0, 0, 0],
                    "frac_left": [0.1, 0.0, 0.5, 0.2], "frac_right": [0.8, 0.3, 0.1, 0.0]})
FLOW = pd.DataFrame([{"layer": layer, "state": s, "q": q, "grad_norm": 0.5 ** q, "when": w}
                     for layer in (1, 2) for s in "hc" for q in range(4)
                     for w in ("init", "trained")])


def test_figures_of_their_own_have_a_panel_each_and_labelled_units():
    fig = figures.saturation_scatter(SAT, "t", 0.1, 0.9, "a note")
    assert [a.get_title() for a in fig.axes] == ["f gate", "i gate"]
    assert fig.get_suptitle() == "t\na note"
    assert fig.axes[0].get_ylabel() == "fraction left-saturated (< 0.1)"
    assert all(a.get_xlabel() == "fraction right-saturated (> 0.9)" for a in fig.axes)
    figures.plt.close(fig)
    fig = figures.error_flow_plot(FLOW, "t")
    assert [a.get_title() for a in fig.axes] == ["error flow through h", "error flow through c"]
    for a, kind in zip(fig.axes, "hc", strict=True):
        assert a.get_xlabel() == "distance q (steps back)" and a.get_yscale() == "log"
        assert a.get_ylabel() == f"mean ‖dℓ_t / d{kind}_(t−q)‖ (ℓ in nats)"
        assert len(a.get_lines()) == 4  # 2 layers, init and trained
    figures.plt.close(fig)


def test_figures_draw_into_the_axes_given():
    fig, axes = figures.plt.subplots(2, 2)
    assert figures.saturation_scatter(SAT, "run", 0.1, 0.9, ax=axes[0]) is fig
    assert [a.get_title() for a in axes[0]] == ["run: f gate", "run: i gate"]
    assert all(len(a.collections) == 2 for a in axes[0])  # a scatter per layer
    one = SAT[SAT.gate == "i"]
    assert figures.saturation_scatter(one, "", 0.1, 0.9, ax=axes[1][0]) is fig
    assert axes[1][0].get_title() == "i gate" and len(axes[1][0].collections) == 2
    assert fig.get_suptitle() == ""  # the caller's figure keeps its own title and layout
    with pytest.raises(ValueError, match="2 gates need 2 axes"):
        figures.saturation_scatter(SAT, "run", 0.1, 0.9, ax=axes[1][1])
    figures.plt.close(fig)
    fig, ax = figures.plt.subplots()
    h = FLOW[FLOW.state == "h"]
    assert figures.error_flow_plot(h, "lstm", ax=ax) is fig
    assert ax.get_title() == "lstm: through h" and len(ax.get_lines()) == 4
    assert ax.get_ylabel().endswith("(ℓ in nats)")
    with pytest.raises(ValueError, match="2 states need 2 axes"):
        figures.error_flow_plot(FLOW, "lstm", ax=ax)
    figures.plt.close(fig)


# ---------------------------------------------------------------------------------------
# one failing probe loses only its own outputs


def _probe_one_run(out, monkeypatch=None, full=True, built=None, **patches):
    """run_probes on a small LSTM over prose and C, its initial model built by a function
    (as a run's caller builds it from the seed; each build appended to `built`); the files
    go into `out`."""
    from study import config

    code = 'int f(int a) {\n\tif (a > 0) { /* "x" */ return g("s\\"", a); }\n}\n// c\n'
    text = "".join(line + "\n" + code for line in synthetic_prose(24).splitlines())
    vocab = "".join(sorted(set(text)))

    class Corpus:
        name, vocab_size = "prose", len(vocab)
        splits = {"val": torch.tensor([vocab.index(c) for c in text])}

        @staticmethod
        def decode(ids):
            return "".join(vocab[int(i)] for i in ids)

    cfg = config.updated(config.load(None), {
        "model.cell": "lstm", "model.hidden_size": 4, "model.num_layers": 1,
        "probes.streams": 2, "probes.warmup": 10, "probes.trace_chars": 100,
        "probes.error_flow_q": 5, "probes.error_flow_batch": 2})
    for target, fn in patches.items():
        monkeypatch.setattr(target, fn)
    built = [] if built is None else built

    def initial_model():
        built.append(1)
        torch.manual_seed(cfg.train.seed)
        return CharLM(len(vocab), cfg.model)

    torch.manual_seed(0)
    model = CharLM(len(vocab), cfg.model)
    return probes.run_probes(model, Corpus, cfg.probes, out, "lstm on prose",
                             init_model=initial_model, full=full)


def written(out) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*")}


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


FILES = {"saturation.csv", "saturation.png", "unit_scores.csv", "best_units.csv",
         "error_flow.csv", "error_flow.png", "traces.html", "traces/in_quotes_1.png"}
GATES = [f"sat.L1.{g}.{m}" for g in "ifo" for m in (
    "left_mean", "right_mean", "units_right_gt50pct", "units_right_gt90pct")]
UNITS = [f"unit.{c}.score" for c in concepts.CONCEPTS]  # which unit: a tag, not a metric
DECAY = [f"{w}.{s}.L1.log_decay_per_step" for w in ("errflow", "errflow_init") for s in "hc"]


def test_every_probe_succeeds_with_todays_metric_keys(tmp_path, capsys):
    out, built = tmp_path / "probes", []
    res = _probe_one_run(out, built=built)
    assert res.ok and res.failed == {} and built == [1]
    assert set(res.metrics) == set(GATES + UNITS + DECAY + ["probe_seconds"])
    assert written(out) >= FILES
    assert set(tmp_path.iterdir()) == {out}  # no staging folder left beside it
    assert set(res.tags) == {f"unit.{c}" for c in concepts.CONCEPTS}
    assert all(v.startswith("layer 1 ") for v in res.tags.values())
    assert "probe_error" not in res.tags
    # the error flow, after training and at initialisation: q = 0..5 per state and layer
    flow = pd.read_csv(out / "error_flow.csv")
    assert set(map(tuple, flow[["when", "state", "layer"]].drop_duplicates().values)) == \
        {(w, s, 1) for w in ("trained", "init") for s in "hc"}
    assert sorted(flow.q[(flow.when == "trained") & (flow.state == "h")]) == list(range(6))
    assert all(math.isfinite(v) and v >= 0 for v in flow.grad_norm)
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("probes: ")]
    assert "val chars" in line and "in_quotes layer 1" in line and "FAILED" not in line


def test_probes_every_n_epochs_compute_metrics_and_write_nothing(tmp_path):
    built = []
    res = _probe_one_run(None, full=False, built=built)
    assert built == []  # the initial model is built only for the error flow
    assert res.ok and set(res.metrics) == set(GATES + UNITS)  # no probe_seconds
    assert res.tags == {}
    full = _probe_one_run(tmp_path / "probes")
    assert {k: full.metrics[k] for k in res.metrics} == res.metrics  # the same values
    with pytest.raises(ValueError, match="needs `out`"):
        _probe_one_run(None, full=True)


def test_probing_again_replaces_the_files(tmp_path):
    out = tmp_path / "probes"
    _probe_one_run(out)
    (out / "traces.html").write_text("stale")
    (out / "traces" / "index.html").write_text("stale")  # what earlier runs wrote
    before = written(out)
    assert _probe_one_run(out).ok
    assert written(out) == before - {"traces/index.html"}
    assert "stale" not in (out / "traces.html").read_text()


def test_a_failing_read_leaves_nothing_to_probe(tmp_path, monkeypatch):
    out = tmp_path / "probes"
    res = _probe_one_run(out, monkeypatch, **{"study.probes.activations.read": _boom})
    assert res.failed == {"read": "RuntimeError: boom"}
    assert res.metrics == {} and res.tags == {} and not out.exists()


@pytest.mark.parametrize("target,failed,lost", [
    ("study.probes.figures.trace_png", "traces", {"traces.html", "traces/in_quotes_1.png"}),
    ("study.probes.flow.error_flow", "error_flow", {"error_flow.csv", "error_flow.png"}),
    ("study.probes.figures.saturation_scatter", "saturation", {"saturation.csv", "saturation.png"}),
    ("study.probes.units.unit_scores", "units",  # and the traces, drawn from the units' scores
     {"unit_scores.csv", "best_units.csv", "traces.html", "traces/in_quotes_1.png"}),
])
def test_one_failing_probe_loses_only_its_own_outputs(tmp_path, monkeypatch, capsys, target,
                                                      failed, lost):
    out = tmp_path / "probes"
    res = _probe_one_run(out, monkeypatch, **{target: _boom})
    assert res.failed == {failed: "RuntimeError: boom"} and not res.ok
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err  # the traceback, on stderr
    assert f"; FAILED {failed}: RuntimeError: boom" in err  # and in the summary line
    files = written(out)
    assert not files & lost and FILES - lost <= files
    assert not any(f.startswith("traces") for f in files) or failed not in ("traces", "units")
    assert set(tmp_path.iterdir()) == {out}  # the failed probe's staging folder is gone
    assert "probe_seconds" in res.metrics
    assert any(k.startswith("sat.") for k in res.metrics) == (failed != "saturation")
    assert any(k.startswith("unit.") for k in res.metrics) == (failed != "units")
    assert (out / "error_flow.csv").exists() == (failed != "error_flow")
    assert any(k.startswith("errflow") for k in res.metrics) == (failed != "error_flow")
    assert bool(res.tags) == (failed != "units") and "probe_error" not in res.tags


def test_the_error_flow_is_logged_as_the_report_s_decay_per_step():
    from study.probes.flow import decay_metrics

    q = list(range(61))
    flow = pd.DataFrame({"when": ["trained"] * 61 + ["init"] * 61, "state": "c", "layer": 2,
                         "q": q * 2, "grad_norm": [2.0 * 0.9 ** i for i in q] + [1.0] * 61})
    # log(0.9) per step from q = 1 to q = 50; a curve that does not decay: 0
    assert decay_metrics(flow) == pytest.approx({
        "errflow.c.L2.log_decay_per_step": math.log(0.9),
        "errflow_init.c.L2.log_decay_per_step": 0.0})
    flow.loc[flow.q >= 1, "grad_norm"] = 0.0  # vanished below float precision: no number
    assert decay_metrics(flow) == {}


# ---------------------------------------------------------------------------------------
# the probes know no tracker


PROBES = Path(__file__).resolve().parent.parent / "study" / "probes"
FORBIDDEN = ("mlflow", "study.train", "study.tracking")


def test_no_probe_module_imports_a_tracker_or_the_training_loop():
    """Not even inside a function (as the removed probe_trained imported study.train)."""
    modules = sorted(PROBES.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "activations.py", "saturation.py",
                                         "units.py", "flow.py", "traces.py", "figures.py"}
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), \
                    f"{path.name} imports {name}"


def test_importing_every_probe_module_loads_no_tracker():
    code = (
        "import importlib, pkgutil, sys, study.probes\n"
        "names = [m.name for m in pkgutil.iter_modules(study.probes.__path__)]\n"
        "for name in names: importlib.import_module('study.probes.' + name)\n"
        f"bad = [m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in "
        f"{FORBIDDEN!r})]\n"
        "print(len(names), bad)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=PROBES.parent.parent, check=True)
    assert done.stdout.split(" ", 1) == [str(len(list(PROBES.glob("*.py"))) - 1), "[]\n"]
