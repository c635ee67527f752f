"""The Triton step kernels (study/engine/triton_step.py) against the torch step of the cell
classes, run by the Triton interpreter on CPU tensors (TRITON_INTERPRET=1, set below
before triton is imported).

For every registered variant, the whole scan (study.engine.scan.scan) on the Triton kernel
object and on the torch step: the states S and C, what the cells keep (K), and the
gradient of a random linear functional of S and C with respect to every input (x, W, b,
R, s0, c0 and the extra parameters), in float64, float32 and bfloat16 storage; under
Graves's clipping (the clamped count exactly); with the error-flow recorder; lstm1997
with its truncated gradient. The layer is set up as study.model.RecurrentLayer does.
Then the activation helpers against torch, and the factory's and `available`'s answers.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from study.engine import fused, triton_step
from study.engine.activations import BINARY, HARD, IDENTITY, SIGMOID, TANH, ScaledSigmoid
from study.engine.cells import CELLS, LSTMFamily
from study.engine.scan import clip_preactivations, record_state_grads, scan, single_backward
from study.model import RecurrentLayer

REQUIRED = os.environ.get("STUDY_REQUIRE_TRITON") == "1"  # CI: fail rather than skip
try:
    import triton  # noqa: F401
except ImportError:
    if REQUIRED:
        raise
    pytest.skip("triton is not installed (pip install triton==3.9.0, a dev dependency): the "
                "Triton step kernels cannot be tested", allow_module_level=True)

CPU = torch.device("cpu")
_OK, _WHY = triton_step.available(CPU)
if not _OK and REQUIRED:
    raise RuntimeError(f"STUDY_REQUIRE_TRITON=1 but the Triton kernels cannot run: {_WHY}")
if not _OK:
    pytest.skip(f"the Triton kernels cannot run here: {_WHY}", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
T, B, I = 4, 3, 5
NAMES = [n for n in CELLS if fused.kernel_family(CELLS[n]) is not None]  # all, today
# (H, BLOCK_H): one block per row, its last 3 units masked; two blocks per row, the
# second with 5 of its 32 units live
SHAPES = {"H5": (5, None), "H37": (37, 32)}
F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-5)
# bfloat16 storage against the torch step in float32 on the same bf16-rounded inputs.
# bfloat16 keeps 8 significant bits: every state, kept value and gradient the scan stores
# is rounded by up to 2^-9 relative, and the scan's GEMMs round their bf16 outputs too;
# over T = 4 steps and the weight-gradient sums (T·B = 12 terms of O(1)) that makes a few
# units of 2^-8 ≈ 4e-3. The largest deviation seen over all variants is 0.014·(1 + |ref|)
# (nog's dW), as large as the torch step's own when it runs in bf16 (0.016, binary's dR):
# atol = rtol = 3e-2 leaves a margin of 2. A wrong formula (a missing term, a wrong
# block or derivative) shows as O(0.1–1).
BF16 = dict(rtol=3e-2, atol=3e-2)
# hard and binary gates: every gate pre-activation at least this far from the kinks of
# hardσ (a = ±2.5) and of 1[a > 0] (a = 0) and its slope (|a| = 2.5)
KINK_MARGIN = 0.25


def kinked(cell) -> bool:
    return getattr(getattr(cell, "sigma", None), "kernel", None) in ("hard", "binary")


def make(name, H, seed=0, truncated=False, kink_free=False):
    """The layer as the model builds it (W (I, G·H), R (Hr, G·H), b, extra parameters,
    R's mask), in float64, with inputs x (T, B, I), s0, c0. Weights uniform in ±0.5 so the
    gates are not saturated. Hard and binary gates: weights uniform in ±2, so that both
    sides of every kink occur (the flat parts of hardσ, |a| ≥ 2.5 for the binary slope),
    or, with `kink_free` (for bfloat16, where rounding alone could move a pre-activation
    across a kink), the gate blocks' weights scaled by 0.1 and their biases ±1.25, which
    keeps every gate pre-activation about 0.5 to 2 away from 0 on either side. Both
    premises are checked below."""
    g = torch.Generator().manual_seed(seed)
    cell = CELLS[name](H, truncated_gradient=truncated)
    layer = RecurrentLayer(cell, I, engine="torch").double()
    scale = 4.0 if kinked(cell) and not kink_free else 1.0
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(scale * (torch.rand(p.shape, generator=g, dtype=p.dtype) - 0.5))
        if kinked(cell) and kink_free:
            for n in ("i", "f", "o"):
                for t in (layer.W, layer.R, layer.b):
                    blk = cell.block(t, n)
                    if blk is not None:
                        blk.mul_(0.1)
                blk = cell.block(layer.b, n)
                if blk is not None:
                    sign = torch.randint(0, 2, blk.shape, generator=g) * 2 - 1
                    blk.copy_(1.25 * sign)
            for p in layer.extra.values():
                p.mul_(0.1)
    x = 2 * torch.rand(T, B, I, generator=g, dtype=torch.float64) - 1
    s0 = 0.5 * torch.randn(B, cell.state_size, generator=g, dtype=torch.float64)
    if cell.state_size > H:  # fgr: the previous gates lie in (0, 1)
        s0[:, H:] = 0.05 + 0.9 * torch.rand(B, cell.state_size - H, generator=g,
                                            dtype=torch.float64)
    c0 = torch.randn(B, H, generator=g, dtype=torch.float64) if cell.has_cell_state else None
    mask = cell.recurrent_mask()
    tensors = {"x": x, "W": layer.W.detach(), "b": layer.b.detach(), "R": layer.R.detach(),
               "s0": s0, "c0": c0, **{k: v.detach() for k, v in layer.extra.items()}}
    return cell, tensors, (None if mask is None else mask.double())


def leaves(tensors, dtype):
    """Fresh leaf copies in `dtype`, requiring gradients (c0 None stays None)."""
    return {k: None if v is None else v.to(dtype).detach().requires_grad_()
            for k, v in tensors.items()}


def run(cell, L, mask, kernel, theta=None, keep=False):
    """The scan forward and backward. Returns S, C, K (keep=True) or None, the gradients
    of every leaf, the recorded norms (h, c per step) and the clamped count."""
    names = [k for k, v in L.items() if v is not None]
    P = tuple(L[k] for k in cell.extra_params())
    R = L["R"] if mask is None else L["R"] * mask.to(L["R"].dtype)
    with contextlib.ExitStack() as stack:
        rec = stack.enter_context(record_state_grads())
        clip = stack.enter_context(clip_preactivations(theta)) if theta is not None else None
        if not keep:  # the backward writes da over K where the kernel allows it
            stack.enter_context(single_backward())
        out = scan(cell, L["x"], L["W"], L["b"], R, L["s0"], L["c0"], P, kernel=kernel,
                   keep=keep)
        S, C = out[0], out[1]
        g = torch.Generator().manual_seed(99)  # a random linear functional of S_t, C_t, t ≥ 1
        w_S = torch.randn(S[1:].shape, generator=g, dtype=torch.float64).to(S.dtype)
        loss = (S[1:] * w_S).sum()
        if cell.has_cell_state:
            w_C = torch.randn(C[1:].shape, generator=g, dtype=torch.float64).to(C.dtype)
            loss = loss + (C[1:] * w_C).sum()
        grads = torch.autograd.grad(loss, [L[k] for k in names])
    return {"S": S.detach(), "C": C.detach(), "K": out[2] if keep else None,
            "grads": dict(zip(names, grads, strict=True)),
            "rec_h": [rec.h[0][t] for t in range(T)],
            "rec_c": [rec.c[0][t] for t in range(T)] if cell.has_cell_state else [],
            "clamped": None if clip is None else clip.clamped}


def assert_same(got, ref, tol, what=""):
    for key in ("S", "C", "K"):
        if got[key] is not None:
            torch.testing.assert_close(got[key].to(ref[key].dtype), ref[key], **tol,
                                       msg=lambda m, k=key: f"{what} {k}: {m}")
    assert got["grads"].keys() == ref["grads"].keys()
    for key, g in got["grads"].items():
        torch.testing.assert_close(g.to(ref["grads"][key].dtype), ref["grads"][key], **tol,
                                   msg=lambda m, k=key: f"{what} d{k}: {m}")
    for key in ("rec_h", "rec_c"):
        assert len(got[key]) == len(ref[key])
        for t, (a, b) in enumerate(zip(got[key], ref[key], strict=True)):
            torch.testing.assert_close(a.to(b.dtype), b, **tol,
                                       msg=lambda m, k=key, t=t: f"{what} {k}[{t}]: {m}")


def kernel(cell, dtype, block_h=None):
    return triton_step.triton_kernel_for(cell, dtype, CPU, block_h=block_h)


# ---------------------------------------------------------------------------------------
# the whole scan against the torch step


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_float64_scan_equals_the_torch_step(name, shape):
    """States, every input's gradient and the recorded error flow (dL/dc_t by every path
    from dc_total), with the backward writing da over what the forward kept."""
    H, block = SHAPES[shape]
    cell, tensors, mask = make(name, H)
    got = run(cell, leaves(tensors, torch.float64), mask, kernel(cell, torch.float64, block))
    ref = run(cell, leaves(tensors, torch.float64), mask, None)
    assert_same(got, ref, F64, name)


@pytest.mark.parametrize("name", NAMES)
def test_float32_scan_equals_the_torch_step(name):
    cell, tensors, mask = make(name, 5)
    got = run(cell, leaves(tensors, torch.float32), mask, kernel(cell, torch.float32))
    ref = run(cell, leaves(tensors, torch.float32), mask, None)
    assert_same(got, ref, F32, name)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_storage_follows_the_float32_torch_step(name):
    """The bf16 Triton scan (bf16 tensors and GEMMs, float32 arithmetic in the kernels)
    against the torch step in float32 on the same bf16-rounded inputs (see BF16)."""
    cell, tensors, mask = make(name, 5, kink_free=True)
    rounded = {k: None if v is None else v.to(torch.bfloat16) for k, v in tensors.items()}
    got = run(cell, leaves(rounded, torch.bfloat16), mask, kernel(cell, torch.bfloat16))
    ref = run(cell, leaves(rounded, torch.float32), mask, None)
    assert got["S"].dtype == torch.bfloat16
    assert_same(got, ref, BF16, name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", NAMES)
def test_clipped_scan_equals_the_torch_step_and_counts_the_same(name, dtype):
    """Graves's clipping at a θ that clamps some components but not all: the gradients,
    the kept values (keep=True: da in its own buffer) and the count."""
    cell, tensors, mask = make(name, 5)
    theta = 0.05
    got = run(cell, leaves(tensors, dtype), mask, kernel(cell, dtype), theta, keep=True)
    ref = run(cell, leaves(tensors, dtype), mask, None, theta, keep=True)
    assert 0 < ref["clamped"] < T * B * cell.G * cell.H  # the clipping mattered
    assert got["clamped"] == ref["clamped"]
    assert_same(got, ref, F64 if dtype == torch.float64 else F32, name)
    free = run(cell, leaves(tensors, dtype), mask, None)
    assert any(not torch.allclose(a, free["grads"][k]) for k, a in ref["grads"].items())


@pytest.mark.parametrize("theta", [None, 0.05], ids=["free", "clipped"])
def test_lstm1997_truncated_gradient(theta):
    cell, tensors, mask = make("lstm1997", 5, truncated=True)
    got = run(cell, leaves(tensors, torch.float64), mask, kernel(cell, torch.float64), theta)
    ref = run(cell, leaves(tensors, torch.float64), mask, None, theta)
    assert_same(got, ref, F64, "lstm1997 truncated")
    assert got["clamped"] == ref["clamped"]
    assert got["grads"]["s0"].abs().max() == 0  # no error back through R to h'
    full = make("lstm1997", 5)[0]
    other = run(full, leaves(tensors, torch.float64), mask, None, theta)
    assert not torch.allclose(other["grads"]["x"], got["grads"]["x"])


class _Recording:
    """An activation that records every pre-activation it is applied to."""

    def __init__(self, act):
        self.act, self.seen = act, []

    def __getattr__(self, name):
        return getattr(self.act, name)

    def apply_(self, a):
        self.seen.append(a.detach().clone())
        return self.act.apply_(a)


@pytest.mark.parametrize("kink_free", [False, True], ids=["wide", "kink-free"])
@pytest.mark.parametrize("name", [n for n in NAMES if kinked(CELLS[n](1))])
def test_hard_and_binary_set_ups_keep_the_gates_off_their_kinks(name, kink_free):
    """The premise of the comparisons above: no gate pre-activation within rounding
    (1e-4 for float32) or, kink-free, within KINK_MARGIN of a point where the gate or its
    derivative jumps (a = 0 for 1[a > 0], |a| = 2.5 for hardσ and the binary slope); and
    with the wide weights, both sides of each kink occur."""
    dtype = torch.bfloat16 if kink_free else torch.float64
    for H, _ in SHAPES.values():
        cell, tensors, mask = make(name, H, kink_free=kink_free)
        cell.sigma = rec = _Recording(cell.sigma)  # the torch step reads self.sigma
        L = {k: None if v is None else v.to(dtype).float() for k, v in tensors.items()}
        P = tuple(L[k] for k in cell.extra_params())
        R = L["R"] if mask is None else L["R"] * mask.float()
        with torch.no_grad():
            scan(cell, L["x"], L["W"], L["b"], R, L["s0"], L["c0"], P)
        a = torch.cat([t.flatten() for t in rec.seen])
        assert len(rec.seen) == T * len(cell.gates) and a.numel() == len(rec.seen) * B * H
        distance = (a.abs() - 2.5).abs()
        if cell.sigma.kernel == "binary":
            distance = torch.minimum(distance, a.abs())
        assert distance.min() > (KINK_MARGIN if kink_free else 1e-4), H
        if not kink_free:
            assert (a.abs() > 2.5).any() and (a.abs() < 2.5).any(), H
            assert (a > 0).any() and (a < 0).any(), H


# ---------------------------------------------------------------------------------------
# the helpers, the factory and `available`

ACTS = {"sigmoid": SIGMOID, "tanh": TANH, "identity": IDENTITY, "hard": HARD,
        "binary": BINARY, "scaled": ScaledSigmoid(4.0)}


@pytest.mark.parametrize("dtype,ulps", [(torch.float64, 4), (torch.float32, 4)],
                         ids=["f64", "f32"])
@pytest.mark.parametrize("kind", list(fused.ACT))
def test_activation_helpers_equal_the_activation_classes(kind, dtype, ulps):
    """_act and _dact of every fused.ACT kind against study.engine.activations, on a grid
    from −30 to 30 and down to 1e-12 (tanh and σ computed here, not by tl): within a few
    units in the last place of the result's scale."""
    x = torch.cat([torch.linspace(-30, 30, 6001, dtype=torch.float64),
                   torch.logspace(-12, 0, 300, dtype=torch.float64)]).to(dtype)
    x = torch.cat([x, -x])
    act = ACTS[kind]
    y, d = triton_step.activation_values(x, kind, getattr(act, "m", 0.0))
    ref_y = act.apply_(x.double().clone())
    if kind == "binary":  # apply_ leaves the pre-activation, the kept value, in place
        ref_y = act.value(x.double())
    kept = x.double() if kind == "binary" else ref_y
    ref_d = act.grad(kept)
    ref_d = torch.ones_like(ref_y) if ref_d is None else ref_d
    eps = torch.finfo(dtype).eps
    scale = ref_y.abs().clamp_min(1.0) if kind != "identity" else ref_y.abs()
    assert ((y.double() - ref_y).abs() <= ulps * eps * scale).all(), kind
    if kind in ("sigmoid", "tanh"):  # relative accuracy near 0 too
        small = x.abs() < 1e-3
        rel = ((y.double() - ref_y) / ref_y)[small & (ref_y != 0)]
        assert rel.abs().max() <= ulps * eps
    # the derivative from y, the kernel's own y: the same formula, so within rounding
    kept_t = x if kind == "binary" else y
    ref_d_own = act.grad(kept_t.double())
    ref_d_own = torch.ones_like(ref_y) if ref_d_own is None else ref_d_own
    assert ((d.double() - ref_d_own).abs() <= ulps * eps * ref_d_own.abs().clamp_min(1)).all()
    torch.testing.assert_close(d.double(), ref_d, rtol=0, atol=1e3 * eps)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "scaled"])
def test_bfloat16_stores_round_to_nearest_even(kind):
    """The kernels compute in float32 and store bf16 rounded to nearest even, as torch's
    cast and the GPU's cvt.rn do (the interpreter's own cast would truncate)."""
    x = torch.linspace(-6, 6, 2001, dtype=torch.float32).to(torch.bfloat16)
    y16, _ = triton_step.activation_values(x, kind, 4.0)
    y32, _ = triton_step.activation_values(x.float(), kind, 4.0)
    assert torch.equal(y16, y32.to(torch.bfloat16))
    assert not torch.equal(y16.float(), y32)  # rounding happened


class _OwnStep(LSTMFamily):
    """Its own step: its equations are not the family's."""

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        super().step(a, ha, s_prev, c_prev, s, c, P)


class _ScaledGates(LSTMFamily):
    sigma = ScaledSigmoid(2.0)


class _BinaryInput(LSTMFamily):
    g = BINARY


def test_the_factory_refuses_what_it_does_not_cover():
    with pytest.raises(ValueError, match="_OwnStep has its own equations"):
        kernel(_OwnStep(4), torch.float32)
    with pytest.raises(ValueError, match="dtype torch.int32"):
        kernel(CELLS["lstm"](4), torch.int32)
    with pytest.raises(ValueError, match="dtype torch.float16"):
        kernel(CELLS["gru"](4), torch.float16)
    with pytest.raises(ValueError, match="_ScaledGates has sigma = 2σ−1"):
        kernel(_ScaledGates(4), torch.float32)
    with pytest.raises(ValueError, match="_BinaryInput has g = binary"):
        kernel(_BinaryInput(4), torch.float32)
    with pytest.raises(ValueError, match="power of two"):
        kernel(CELLS["rnn"](4), torch.float32, block_h=24)
    # and what it covers, it covers with the C kernels' family and flags
    for name, cls in CELLS.items():
        obj = kernel(cls(4), torch.float32)
        family = fused.kernel_family(cls)
        assert family is not None, name
        c_cls = {"lstm": fused.LSTMKernel, "gru": fused.GRUKernel, "rnn": fused.RNNKernel}
        assert getattr(obj, "inplace_grad", False) == getattr(c_cls[family], "inplace_grad",
                                                              False)
    assert triton_step._spec_problem(triton_step._lstm_fwd) is None
    assert triton_step._spec_problem(triton_step._lstm_bwd) is None


def test_available_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = triton_step.available(CPU)
    assert not ok and "no CUDA device" in why and "TRITON_INTERPRET is not 1" in why
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET is not 1"):
        kernel(CELLS["lstm"](4), torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ok, why = triton_step.available(CPU)
    assert ok and "interpreter" in why
    monkeypatch.setattr(triton_step, "triton", None)
    ok, why = triton_step.available(CPU)
    assert not ok and "triton is not installed: pip install triton==3.9.0" in why


def test_the_module_imports_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "from study.engine import triton_step\n"
            "print(triton_step.available('cpu'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(False, 'triton is not installed: pip install triton==3.9.0" in r.stdout
