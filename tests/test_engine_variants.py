"""A variant is one class: its printed equations against REFERENCES.md, a variant that is
switches only (registered with one line, its C kernel derived automatically), a variant
with its own equations (no kernel: the torch step, said once), and the kernel description
generated for both C and ctypes from one list."""

import ctypes
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from study.engine import fused
from study.engine.cells import (
    CELLS,
    IDENTITY,
    RNN,
    LSTMFamily,
    ScaledSigmoid,
    get_cell_class,
    listing,
    main,
    register,
)
from study.engine.paths import PathError
from study.model import RecurrentLayer
from tests.test_cells import H, I, engine_outputs, grads, inputs, make_layer

REFERENCES = Path(__file__).resolve().parents[2] / "shared" / "REFERENCES.md"
CPU = torch.device("cpu")


def norm(line: str) -> str:
    return " ".join(line.split())


def baseline() -> list[str]:
    """REFERENCES.md's six baseline lines z i f c o h, with g = k = tanh."""
    if not REFERENCES.is_file():
        pytest.skip(f"{REFERENCES} is absent: the equations cannot be compared with it")
    block = REFERENCES.read_text().split("The baseline of the ablation is", 1)[1]
    lines = [ln for ln in block.splitlines() if re.match(r" {4}[zifcoh] = ", ln)][:6]
    eqs = [re.split(r"\s{2,}", ln.strip())[0] for ln in lines]  # drop the comment column
    assert [e[0] for e in eqs] == list("zifcoh"), eqs
    return [norm(re.sub(r"\b[gk]\(", "tanh(", e)) for e in eqs]


def test_peephole_equations_are_references_baseline():
    assert [norm(e) for e in get_cell_class("peephole").equations()] == baseline()


def test_lstm_equations_are_the_baseline_without_peepholes():
    expected = [norm(re.sub(r"p_\w ⊙ c'? \+ ", "", e)) for e in baseline()]
    assert [norm(e) for e in get_cell_class("lstm").equations()] == expected
    assert "p_" not in " ".join(expected)


# the lines each variant changes, as REFERENCES.md's table states them
CHANGED = {
    "nfg": {"f": "f = 1", "c": "c = c' + i ⊙ z"},
    "nig": {"i": "i = 1", "c": "c = f ⊙ c' + z"},
    "nog": {"o": "o = 1", "h": "h = tanh(c)"},
    "niaf": {"z": "z = W_z x + R_z h' + b_z"},
    "noaf": {"h": "h = o ⊙ c"},
    "cifg": {"f": "f = 1 − i", "c": "c = (1 − i) ⊙ c' + i ⊙ z"},
    "fgr": {"i": "i = σ(W_i x + R_i h' + R_ii i' + R_fi f' + R_oi o' + p_i ⊙ c' + b_i)",
            "f": "f = σ(W_f x + R_f h' + R_if i' + R_ff f' + R_of o' + p_f ⊙ c' + b_f)",
            "o": "o = σ(W_o x + R_o h' + R_io i' + R_fo f' + R_oo o' + p_o ⊙ c + b_o)"},
    "lstm1997": {"z": "z = 4σ(W_z x + R_z h' + b_z) − 2", "i": "i = σ(W_i x + R_i h' + b_i)",
                 "f": "f = 1", "c": "c = c' + i ⊙ z", "o": "o = σ(W_o x + R_o h' + b_o)",
                 "h": "h = o ⊙ (2σ(c) − 1)"},
    "hard": {"i": "i = hardσ(W_i x + R_i h' + p_i ⊙ c' + b_i)",
             "f": "f = hardσ(W_f x + R_f h' + p_f ⊙ c' + b_f)",
             "o": "o = hardσ(W_o x + R_o h' + p_o ⊙ c + b_o)"},
    "binary": {"i": "i = 1[W_i x + R_i h' + p_i ⊙ c' + b_i > 0]",
               "f": "f = 1[W_f x + R_f h' + p_f ⊙ c' + b_f > 0]",
               "o": "o = 1[W_o x + R_o h' + p_o ⊙ c + b_o > 0]"},
}


@pytest.mark.parametrize("name", list(CHANGED))
def test_each_lstm_variant_changes_its_lines_and_keeps_the_rest(name):
    base = dict(zip("zifcoh", [norm(e) for e in get_cell_class("peephole").equations()],
                    strict=True))
    expected = [CHANGED[name].get(k, base[k]) for k in "zifcoh"]
    assert [norm(e) for e in get_cell_class(name).equations()] == expected


def test_gru_and_rnn_equations_are_references():
    assert get_cell_class("gru").equations() == [
        "r = σ(W_r x + R_r h' + b_r)", "u = σ(W_u x + R_u h' + b_u)",
        "n = tanh(W_n x + r ⊙ (R_n h' + b_Rn) + b_n)", "h = (1 − u) ⊙ n + u ⊙ h'"]
    assert get_cell_class("rnn").equations() == ["h = tanh(W x + R h' + b)"]


def test_listing_has_a_header_notes_and_a_legend():
    text = "\n".join(listing("lstm1997"))
    assert text.startswith("lstm1997: LSTM1997 (lstm family). Hochreiter97's")
    assert "truncated gradient" in text and "legend:" in text
    assert "straight-through" in "\n".join(listing("binary"))
    assert "hardσ(a) = max(0, min(1, 0.2·a + 0.5))" in "\n".join(listing("hard"))


def test_command_line(capsys):
    assert main(["--all"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: " in out for name in CELLS)
    with pytest.raises(SystemExit) as e:
        main(["lstn"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'lstn'" in err and all(n in err for n in CELLS)
    r = subprocess.run([sys.executable, "-m", "study.engine.cells", "lstm"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:7] == [f"    {e}" for e in get_cell_class("lstm").equations()]


# ---------------------------------------------------------------------------------------
# a variant made of switches: one subclass, one line, a derived kernel


@pytest.fixture
def registry():
    saved = dict(CELLS)
    yield CELLS
    CELLS.clear()
    CELLS.update(saved)


def test_a_switches_only_variant_gets_a_derived_kernel_equal_to_the_torch_step(registry):
    @register("niafcifg")
    class NIAFCIFG(LSTMFamily):
        g = IDENTITY
        forget = "coupled"

    assert list(CELLS)[-1] == "niafcifg" and get_cell_class("niafcifg") is NIAFCIFG
    eqs = NIAFCIFG.equations()
    assert eqs[0] == "z = W_z x + R_z h' + b_z" and eqs[2] == "f = 1 − i"
    assert eqs[3] == "c = (1 − i) ⊙ c' + i ⊙ z"
    assert fused.kernel_family(NIAFCIFG) == "lstm"
    spec = fused.lstm_spec(NIAFCIFG(H))
    assert spec["g"] == fused.ACT["identity"] and spec["forget"] == fused.FORGET["coupled"]
    assert spec["of"] == -1 and spec["pf"] == -1 and spec["pi"] == 0 and spec["po"] == 1
    assert isinstance(make_layer("niafcifg").kernel(torch.float64, CPU), fused.LSTMKernel)
    for dtype, tol in ((torch.float64, dict(rtol=1e-10, atol=1e-12)),
                       (torch.float32, dict(rtol=1e-4, atol=1e-5))):
        out = []
        for engine in ("fused", "torch"):
            layer = make_layer("niafcifg", dtype=dtype, engine=engine)
            x, s0, c0 = inputs(layer, dtype=dtype)
            out.append(grads(layer, x, s0, c0,
                             lambda l=layer, a=(x, s0, c0): engine_outputs(l, *a)))
        (h1, c1, g1), (h2, c2, g2) = out
        torch.testing.assert_close(h1, h2, **tol)
        torch.testing.assert_close(c1, c2, **tol)
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a, b, **tol)
    layer = make_layer("niafcifg", engine="fused")  # and the kernel's gradient is right
    x, s0, c0 = inputs(layer)
    assert torch.autograd.gradcheck(lambda *a: engine_outputs(layer, *a[:3]),
                                    [x, s0, c0, *layer.parameters()], eps=1e-6, atol=1e-6)


def test_register_refuses_a_taken_name_and_a_non_cell(registry):
    class Other(LSTMFamily):
        peepholes = False

    with pytest.raises(ValueError, match="already"):
        register("lstm")(Other)
    with pytest.raises(TypeError):
        register("x")(object)
    assert CELLS["lstm"] is not Other


def test_switches_that_make_no_lstm_are_refused_at_class_definition():
    with pytest.raises(TypeError, match="needs the input gate"):
        type("Bad", (LSTMFamily,), {"forget": "coupled", "input_gate": False})
    with pytest.raises(TypeError, match="all three gates"):
        type("Bad", (LSTMFamily,), {"gate_recurrence": True, "output_gate": False})


# ---------------------------------------------------------------------------------------
# a variant with its own equations: no kernel, the torch step, said once


def leaky_class():
    """A variant with its own equations (a fresh class each call: the engine's notice is
    once per class)."""

    class Leaky(RNN):
        """A leaky RNN: h = ½ h' + ½ tanh(W x + R h' + b)."""

        def step(self, a, ha, s_prev, c_prev, s, c, P):
            torch.add(s_prev, a.tanh_(), out=s).mul_(0.5)  # a keeps y = tanh(a)

        def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None):
            torch.mul(kept, kept, out=da).neg_().add_(1).mul_(ds).mul_(0.5)
            return ds * 0.5, None

        @classmethod
        def equations(cls):
            return ["h = ½ h' + ½ tanh(W x + R h' + b)"]

    return Leaky


def naive_leaky(layer, x, s0):
    s, hs = s0, []
    for t in range(x.shape[0]):
        s = 0.5 * s + 0.5 * torch.tanh(x[t] @ layer.W + s @ layer.R + layer.b)
        hs.append(s)
    return torch.stack(hs), None


def test_own_equations_run_on_the_torch_step_said_once(capsys):
    Leaky = leaky_class()
    assert fused.kernel_family(Leaky) is None
    layers = [RecurrentLayer(Leaky(H), I) for _ in range(2)]
    assert all(layer.kernel(dt, CPU) is None for layer in layers
               for dt in (torch.float32, torch.float64))
    err = capsys.readouterr().err.splitlines()
    assert err == ["engine: Leaky has its own equations and no kernel; it runs on "
                   "the torch step"]
    with pytest.raises(PathError, match="model.engine = 'fused': Leaky has its own equations "
                       "and no kernel; use 'auto' or 'torch'"):
        RecurrentLayer(Leaky(H), I, engine="fused").kernel(torch.float32, CPU)
    text = listing_of(Leaky)
    assert text[0].startswith("leaky: Leaky (rnn family). A leaky RNN")
    assert text[1] == "    h = ½ h' + ½ tanh(W x + R h' + b)"
    assert not any("warning" in line for line in text)


def listing_of(cls):
    saved = dict(CELLS)
    try:
        register("leaky")(cls)
        return listing("leaky")
    finally:
        CELLS.clear()
        CELLS.update(saved)


def test_own_equations_backward_matches_autograd():
    torch.manual_seed(0)
    layer = RecurrentLayer(leaky_class()(H), I).double()
    for p in layer.parameters():
        torch.nn.init.uniform_(p, -0.5, 0.5)
    x, s0, _ = inputs(layer)
    h1, _, g1 = grads(layer, x, s0, None, lambda: engine_outputs(layer, x, s0, None))
    h2, _, g2 = grads(layer, x, s0, None, lambda: naive_leaky(layer, x, s0))
    torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: engine_outputs(layer, *a[:2], None)[0],
                                    [x, s0, *layer.parameters()], eps=1e-6, atol=1e-6)


def test_a_family_step_with_switches_the_kernels_lack_runs_on_torch(capsys):
    class ScaledGates(LSTMFamily):
        sigma = ScaledSigmoid(2.0)

    assert fused.kernel_family(ScaledGates) == "lstm"
    layer = RecurrentLayer(ScaledGates(H), I)
    assert layer.kernel(torch.float32, CPU) is None
    assert layer.training_path(CPU).kind == "torch"  # and the run's params say so
    assert "engine: ScaledGates has sigma = 2σ−1, which the step kernels do not cover; it " \
        "runs on the torch step" in capsys.readouterr().err
    with pytest.raises(PathError, match="'fused': ScaledGates has sigma = 2σ−1"):
        RecurrentLayer(ScaledGates(H), I, engine="fused").kernel(torch.float32, CPU)


def test_the_equations_listing_warns_when_a_step_is_changed_but_not_its_equations():
    class Changed(LSTMFamily):
        def step(self, *args):
            return super().step(*args)

    assert fused.kernel_family(Changed) is None
    assert any("has its own step but inherits the equations" in line
               for line in listing_of(Changed))


# ---------------------------------------------------------------------------------------
# one description of the kernel's spec: the C struct and the ctypes Structure


def test_generated_c_struct_and_ctypes_structure_agree():
    header = fused.spec_header()
    body = header.split("typedef struct {", 1)[1].split("} Spec;", 1)[0]
    c_fields = re.findall(r"^\s*(int|double) (\w+);", body, flags=re.M)
    names = {ctypes.c_int: "int", ctypes.c_double: "double"}
    assert c_fields == [(names[t], n) for n, t in fused.Spec._fields_]
    assert [n for n, _ in c_fields] == [f[1] for f in fused.SPEC_FIELDS]
    for kinds, prefix in ((fused.ACT, "ACT"), (fused.FORGET, "FORGET")):
        for kind, value in kinds.items():
            assert f"{prefix}_{kind.upper()} = {value}" in header
    source = fused.SOURCES[0].read_text()
    assert '#include "_spec.h"' in source and "typedef struct" not in source
    assert set(fused.lstm_spec(get_cell_class("peephole")(H))) == {f[0] for f in fused.SPEC_FIELDS}
