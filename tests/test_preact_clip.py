"""Graves's clipping (`train.clip: preact`, study.engine.scan.clip_preactivations): inside
backpropagation, the derivative of the loss with respect to every pre-activation is clamped
to [−θ, θ] at every step before anything else is derived from it.

The reference is autograd through a naive unrolled cell (the equations of tests/reference.py,
repeated here with each pre-activation passed through `pre`), with a hook
`g.clamp(-θ, θ)` on every pre-activation tensor. Both engines (the torch step of the cell
classes and the fused C kernels) must give its gradients, and its count of clamped
components, for every variant, dense and one-hot inputs."""

import math

import pytest
import torch

from study.config import ModelConfig
from study.engine.cells import CELLS, RNN
from study.engine.scan import clip_preactivations, record_state_grads, single_backward
from study.model import CharLM, RecurrentLayer
from tests.reference import binary_gate, hard_sigmoid, sig, tanh

T, B, I, H, V = 7, 3, 4, 5, 6
ENGINES = ["fused", "torch"]
# every variant, and lstm1997 with Hochreiter97's truncated gradient
CASES = [(n, False) for n in CELLS] + [("lstm1997", True)]
CASE_IDS = [n + ("-truncated" if tr else "") for n, tr in CASES]
TIGHT = dict(rtol=1e-10, atol=1e-12)



class Hooks:
    """`pre(a)`: a pre-activation whose gradient is clamped to [−θ, θ] (θ None: not
    clamped); counts what it sees."""

    def __init__(self, theta=None):
        self.theta = theta
        self.clamped = self.nonzero = self.total = 0
        self.magnitudes = []

    def __call__(self, a):
        a = a.clone()

        def hook(g):
            self.total += g.numel()
            self.nonzero += int(torch.count_nonzero(g))
            self.magnitudes.append(g.detach().abs().flatten())
            if self.theta is None:
                return None
            self.clamped += int(torch.count_nonzero(g.abs() > self.theta))
            return g.clamp(-self.theta, self.theta)

        a.register_hook(hook)
        return a


def reference(name, layer, x, s0, c0, pre, truncated=False):
    """Unroll variant `name`, each pre-activation through `pre`. Returns h (T, B, H) and
    c (T, B, H) or None."""
    W, R, b = layer.W, layer.recurrent_weights(), layer.b
    P = dict(layer.extra)
    blocks = layer.cell.blocks

    def block(t, n):
        k = blocks.index(n)
        return t[..., k * H:(k + 1) * H]

    s, c = s0, c0
    hs, cs = [], []
    for t in range(x.shape[0]):
        xw = W[x[t]] if layer.onehot else x[t] @ W
        if name == "gru":
            xa, ha = xw + b, s @ R
            r = sig(pre(block(xa, "r") + block(ha, "r")))
            u = sig(pre(block(xa, "u") + block(ha, "u")))
            n = tanh(pre(block(xa, "n") + r * (block(ha, "n") + P["b_Rn"])))
            s = (1 - u) * n + u * s
            hs.append(s)
            continue
        if name == "rnn":
            s = tanh(pre(xw + s @ R + b))
            hs.append(s)
            continue
        c_prev = c
        a = xw + (s.detach() if truncated else s) @ R + b
        p = P.get("peep")
        if name in ("peephole", "fgr", "niaf", "noaf", "hard", "binary"):
            gate = {"hard": hard_sigmoid, "binary": binary_gate}.get(name, sig)
            i = gate(pre(block(a, "i") + p[0] * c_prev))
            f = gate(pre(block(a, "f") + p[1] * c_prev))
            z = pre(block(a, "z")) if name == "niaf" else tanh(pre(block(a, "z")))
            c = f * c_prev + i * z
            o = gate(pre(block(a, "o") + p[2] * c))
            h = o * c if name == "noaf" else o * tanh(c)
        elif name == "lstm":
            i, f, o = (sig(pre(block(a, n))) for n in "ifo")
            c = f * c_prev + i * tanh(pre(block(a, "z")))
            h = o * tanh(c)
        elif name == "nfg":
            i = sig(pre(block(a, "i") + p[0] * c_prev))
            c = c_prev + i * tanh(pre(block(a, "z")))
            o = sig(pre(block(a, "o") + p[1] * c))
            h = o * tanh(c)
        elif name == "nig":
            f = sig(pre(block(a, "f") + p[0] * c_prev))
            c = f * c_prev + tanh(pre(block(a, "z")))
            o = sig(pre(block(a, "o") + p[1] * c))
            h = o * tanh(c)
        elif name == "nog":
            i = sig(pre(block(a, "i") + p[0] * c_prev))
            f = sig(pre(block(a, "f") + p[1] * c_prev))
            c = f * c_prev + i * tanh(pre(block(a, "z")))
            h = tanh(c)
        elif name == "cifg":
            i = sig(pre(block(a, "i") + p[0] * c_prev))
            c = (1 - i) * c_prev + i * tanh(pre(block(a, "z")))
            o = sig(pre(block(a, "o") + p[1] * c))
            h = o * tanh(c)
        elif name == "lstm1997":
            i = sig(pre(block(a, "i")))
            o = sig(pre(block(a, "o")))
            c = c_prev + i * (4 * sig(pre(block(a, "z"))) - 2)
            h = o * (2 * sig(c) - 1)
        else:
            raise KeyError(f"no clipped reference for {name!r}: add its equations here")
        s = torch.cat([h, i, f, o], 1) if name == "fgr" else h
        hs.append(h)
        cs.append(c)
    return torch.stack(hs), (torch.stack(cs) if cs else None)


def make(name, engine, truncated=False, onehot=False, dtype=torch.float64, seed=0):
    """A layer with weights large enough that some gates saturate, and its inputs."""
    torch.manual_seed(seed)
    cell = CELLS[name](H, truncated_gradient=truncated)
    layer = RecurrentLayer(cell, V if onehot else I, onehot=onehot, engine=engine).to(dtype)
    scale = 2.0 if name == "binary" else 0.7
    for prm in layer.parameters():
        torch.nn.init.uniform_(prm, -scale, scale)
    g = torch.Generator().manual_seed(seed + 1)
    if onehot:
        x = torch.randint(0, V, (T, B), generator=g)
    else:
        x = torch.randn(T, B, I, dtype=dtype, generator=g).requires_grad_()
    s0 = 0.5 * torch.randn(B, cell.state_size, dtype=dtype, generator=g)
    if cell.state_size > H:  # fgr: the previous gates lie in (0, 1)
        s0[:, H:].uniform_(0.05, 0.95)
    s0.requires_grad_()
    c0 = torch.randn(B, H, dtype=dtype, generator=g).requires_grad_() \
        if cell.has_cell_state else None
    return layer, (x, s0, c0)


def engine_run(layer, x, s0, c0):
    S, C = layer(x, (s0, c0))
    return S[1:, :, :H], (C[1:] if layer.cell.has_cell_state else None)


def leaves(layer, x, s0, c0):
    out = [] if layer.onehot else [x]
    return out + [s0] + ([c0] if c0 is not None else []) + list(layer.parameters())


def grads(layer, inputs, fn):
    """Gradients of a fixed random readout of h and c with respect to every leaf; fn runs
    the forward (the backward runs after it returns, outside any context it opened)."""
    h, c = fn()
    g = torch.Generator().manual_seed(7)
    loss = (h * torch.randn(h.shape, dtype=h.dtype, generator=g)).sum()
    if c is not None:
        loss = loss + (c * torch.randn(c.shape, dtype=c.dtype, generator=g)).sum()
    wrt = leaves(layer, *inputs)
    out = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [torch.zeros_like(v) if d is None else d for v, d in zip(wrt, out, strict=True)]


def clipped_engine(layer, inputs, theta):
    def fn():
        with clip_preactivations(theta) as clip:
            box.append(clip)
            return engine_run(layer, *inputs)

    box = []
    return grads(layer, inputs, fn), box[0].clamped


def clipped_reference(name, layer, inputs, theta, truncated):
    hooks = Hooks(theta)
    g = grads(layer, inputs, lambda: reference(name, layer, *inputs, hooks, truncated))
    return g, hooks


def mid_theta(name, layer, inputs, truncated):
    """θ at the median magnitude of the unclipped pre-activation gradients, halfway
    between two of them (a component at θ itself would count or not by rounding)."""
    _, hooks = clipped_reference(name, layer, inputs, None, truncated)
    m = torch.cat(hooks.magnitudes)
    m = m[m > 0].sort().values
    k = len(m) // 2
    return float(m[k - 1] + m[k]) / 2


@pytest.mark.parametrize("onehot", [False, True], ids=["dense", "onehot"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name,truncated", CASES, ids=CASE_IDS)
def test_clipped_gradients_equal_autograd_with_a_clamp_hook_on_each_preactivation(
        name, truncated, engine, onehot):
    layer, inputs = make(name, engine, truncated, onehot)
    theta = mid_theta(name, layer, inputs, truncated)
    g_ref, hooks = clipped_reference(name, layer, inputs, theta, truncated)
    g, clamped = clipped_engine(layer, inputs, theta)
    assert 0 < clamped < hooks.total == T * B * layer.cell.G * H
    assert clamped == hooks.clamped
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)
    # the clipping mattered: the unclipped gradients differ
    g_free = grads(layer, inputs, lambda: engine_run(layer, *inputs))
    assert any(not torch.allclose(a, b, **TIGHT) for a, b in zip(g, g_free, strict=True))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name,truncated", CASES, ids=CASE_IDS)
def test_infinite_or_unreached_theta_is_no_clipping_to_the_last_bit(name, truncated, engine):
    layer, inputs = make(name, engine, truncated)
    g_free = grads(layer, inputs, lambda: engine_run(layer, *inputs))
    for theta in (math.inf, 1e30):  # ∞ records no clip; 1e30 clamps, but nothing
        g, clamped = clipped_engine(layer, inputs, theta)
        assert clamped == 0
        for a, b in zip(g, g_free, strict=True):
            assert torch.equal(a, b), theta


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name,truncated", CASES, ids=CASE_IDS)
def test_a_tiny_theta_counts_every_component_it_reaches(name, truncated, engine):
    """θ = 1e-12: every component outside [−θ, θ] counts, as the hooks count them; and
    with the incoming derivatives themselves small, these are nearly all the nonzero
    ones (those that stay inside are products of clamped ones, GRU's d_r)."""
    layer, inputs = make(name, engine, truncated)
    g_ref, hooks = clipped_reference(name, layer, inputs, 1e-12, truncated)
    g, clamped = clipped_engine(layer, inputs, 1e-12)
    assert clamped == hooks.clamped
    assert clamped > 0.5 * hooks.nonzero
    if name != "gru":  # every nonzero component came from an O(1) readout term
        assert clamped == hooks.nonzero
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-22)


@pytest.mark.parametrize("name,truncated", CASES, ids=CASE_IDS)
def test_fused_float32_equals_torch_float32_under_clipping(name, truncated):
    out = []
    for engine in ENGINES:
        layer, inputs = make(name, engine, truncated, dtype=torch.float32)
        theta = mid_theta(name, layer, inputs, truncated)
        out.append(clipped_engine(layer, inputs, theta))
    (g1, n1), (g2, n2) = out
    assert n1 > 0 and abs(n1 - n2) <= 2  # a component within rounding of θ may differ
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_clip_is_captured_when_the_scan_runs_forward(engine):
    """The context decides at forward time: a graph recorded inside is clipped by a backward
    run after the block (the other tests); one recorded outside is not, even when
    back-propagated inside. Nested contexts count apart."""
    layer, inputs = make("peephole", engine)
    wrt = leaves(layer, *inputs)
    theta = mid_theta("peephole", layer, inputs, False)
    h, c = engine_run(layer, *inputs)
    g_free = torch.autograd.grad(h.sum() + c.sum(), wrt)
    h, c = engine_run(layer, *inputs)  # recorded outside
    with clip_preactivations(theta) as clip:
        g_outside = torch.autograd.grad(h.sum() + c.sum(), wrt)
    assert clip.clamped == 0
    assert all(torch.equal(a, b) for a, b in zip(g_outside, g_free, strict=True))
    with clip_preactivations(theta) as outer:
        h1, _ = engine_run(layer, *inputs)
        with clip_preactivations(math.inf) as inner:
            h2, _ = engine_run(layer, *inputs)
        h3, _ = engine_run(layer, *inputs)
    torch.autograd.grad(h1.sum() + h2.sum() + h3.sum(), wrt)
    assert outer.clamped > 0 and inner.clamped == 0


@pytest.mark.parametrize("name", ["peephole", "fgr", "gru", "rnn", "binary"])
def test_single_backward_buffers_do_not_change_clipped_gradients(name):
    layer, inputs = make(name, "fused")
    theta = mid_theta(name, layer, inputs, False)
    g1, n1 = clipped_engine(layer, inputs, theta)

    def fn():
        with single_backward(), clip_preactivations(theta) as clip:
            box.append(clip)
            return engine_run(layer, *inputs)

    box = []
    g2 = grads(layer, inputs, fn)
    assert box[0].clamped == n1 > 0
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_whole_model_sums_the_count_over_its_layers(engine):
    """What train_step does: the model's forward under the context, its backward after it.
    The count is the sum over the layers (each run under a context of its own gives the
    same gradients and counts), and the error-flow probe's recorder works alongside."""
    cfg = ModelConfig(cell="peephole", hidden_size=H, num_layers=2, input="onehot",
                      init_range=0.7, engine=engine)
    torch.manual_seed(0)
    model = CharLM(V, cfg).double()
    x = torch.randint(0, V, (T, B), generator=torch.Generator().manual_seed(1))
    theta = 0.02
    with clip_preactivations(theta) as clip, record_state_grads() as rec:
        logits, _, _ = model(x)
    g = torch.autograd.grad(logits.logsumexp(-1).sum(), list(model.parameters()))
    assert len(rec.h) == 2 and len(rec.h[0]) == T

    inp, counts = x, []
    for layer in model.layers:
        with clip_preactivations(theta) as one:
            S, _ = layer(inp, layer.zero_state(B))
        counts.append(one)
        inp = S[1:, :, :H]
    g_apart = torch.autograd.grad(model.decoder(inp).logsumexp(-1).sum(),
                                  list(model.parameters()), allow_unused=True)
    assert clip.clamped == sum(c.clamped for c in counts) and min(c.clamped for c in counts) > 0
    for a, b in zip(g, g_apart, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_a_cell_whose_backward_takes_no_clip_refuses_to_run_under_it():
    class Leaky(RNN):
        """A leaky RNN: h = ½ h' + ½ tanh(W x + R h' + b)."""

        def step(self, a, ha, s_prev, c_prev, s, c, P):
            torch.add(s_prev, a.tanh_(), out=s).mul_(0.5)

        def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None):
            torch.mul(kept, kept, out=da).neg_().add_(1).mul_(ds).mul_(0.5)
            return ds * 0.5, None

        @classmethod
        def equations(cls):
            return ["h = ½ h' + ½ tanh(W x + R h' + b)"]

    layer = RecurrentLayer(Leaky(H), I, engine="torch")
    x = torch.randn(T, B, I)
    with pytest.raises(RuntimeError, match="Leaky.backward takes no `clip`"), \
            clip_preactivations(1.0):
        layer(x, layer.zero_state(B))
    with clip_preactivations(math.inf):  # no clipping: runs
        layer(x, layer.zero_state(B))[0].sum().backward()
    with torch.no_grad(), clip_preactivations(1.0):  # no backward: runs
        layer(x, layer.zero_state(B))


@pytest.mark.parametrize("theta", [0.0, -1.0, math.nan])
def test_theta_must_be_positive(theta):
    with pytest.raises(ValueError, match="> 0"), clip_preactivations(theta):
        pass
