"""The cells and the engine against references: nn.LSTM/nn.GRU with copied weights, naive
float64 implementations of each variant's equations, and finite differences."""

import pytest
import torch

from study.engine.cells import CELLS, get_cell_class
from study.engine.scan import single_backward
from study.model import RecurrentLayer
from tests import reference

T, B, I, H = 6, 3, 5, 4
ENGINES = ["fused", "torch"]  # "fused" is required here: a kernel that fails to build fails


def make_layer(name, dtype=torch.float64, scale=0.5, seed=0, truncated=False, engine="fused"):
    torch.manual_seed(seed)
    layer = RecurrentLayer(CELLS[name](H, truncated_gradient=truncated), I,
                           engine=engine).to(dtype)
    for p in layer.parameters():
        torch.nn.init.uniform_(p, -scale, scale)
    return layer


def inputs(layer, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, dtype=dtype, generator=g, requires_grad=True)
    s0 = (0.5 * torch.randn(B, layer.cell.state_size, dtype=dtype, generator=g)).requires_grad_()
    c0 = None
    if layer.cell.has_cell_state:
        c0 = torch.randn(B, H, dtype=dtype, generator=g).requires_grad_()
    if layer.cell.state_size > H:  # fgr: the previous gates lie in (0, 1)
        with torch.no_grad():
            s0[:, H:].uniform_(0.05, 0.95)
    return x, s0, c0


def engine_outputs(layer, x, s0, c0):
    S, C = layer(x, (s0, c0))
    return S[1:, :, :H], (C[1:] if layer.cell.has_cell_state else None)


def loss_of(h, c, seed=2):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h.shape, dtype=h.dtype, generator=g)
    out = (h * w).sum()
    if c is not None:
        out = out + (c * torch.randn(c.shape, dtype=c.dtype, generator=g)).sum()
    return out


def grads(layer, x, s0, c0, fn):
    leaves = [x, s0] + ([c0] if c0 is not None else []) + list(layer.parameters())
    h, c = fn()
    g = torch.autograd.grad(loss_of(h, c), leaves, allow_unused=True)
    return h, c, [torch.zeros_like(v) if d is None else d for v, d in zip(leaves, g, strict=True)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(CELLS))
def test_engine_matches_naive_reference_float64(name, engine):
    """Values and every gradient (input, initial states, all weights) agree with autograd
    through a naive one-equation-per-line implementation of the variant."""
    layer = make_layer(name, engine=engine)
    x, s0, c0 = inputs(layer)
    h1, c1, g1 = grads(layer, x, s0, c0, lambda: engine_outputs(layer, x, s0, c0))
    h2, c2, g2 = grads(layer, x, s0, c0, lambda: reference.run(name, layer, x, s0, c0))
    torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-12)
    if c1 is not None:
        torch.testing.assert_close(c1, c2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", [n for n in CELLS if n != "binary"])
def test_engine_gradcheck(name, engine):
    """Finite differences in float64 through the engine path: inputs, initial states and
    all weights. (`binary` has a straight-through gradient by definition: tested below.)"""
    layer = make_layer(name, engine=engine)
    x, s0, c0 = inputs(layer)
    params = list(layer.parameters())
    leaves = [x, s0] + ([c0] if c0 is not None else [])

    def fn(*args):
        h, c = engine_outputs(layer, *args[:2], args[2] if c0 is not None else None)
        return h if c is None else (h, c)

    assert torch.autograd.gradcheck(fn, leaves + params, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
def test_lstm1997_truncated_gradient_detaches_exactly_the_recurrent_paths(engine):
    layer = make_layer("lstm1997", truncated=True, engine=engine)
    x, s0, c0 = inputs(layer)
    _, _, g1 = grads(layer, x, s0, c0, lambda: engine_outputs(layer, x, s0, c0))
    _, _, g2 = grads(layer, x, s0, c0,
                     lambda: reference.run("lstm1997", layer, x, s0, c0, truncated=True))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and it really differs from the full gradient: h0 gets no error at all through R
    full = make_layer("lstm1997", engine=engine)
    _, _, g3 = grads(full, x, s0, c0, lambda: engine_outputs(full, x, s0, c0))
    assert g1[1].abs().max() == 0 and g3[1].abs().max() > 0
    assert not torch.allclose(g1[0], g3[0])


@pytest.mark.parametrize("engine", ENGINES)
def test_binary_gates_are_exactly_zero_or_one_and_backward_is_straight_through(engine):
    layer = make_layer("binary", scale=2.0, engine=engine)
    x, s0, c0 = inputs(layer)
    with torch.no_grad():
        S, C, K = layer(x, (s0, c0), keep=True)
    gates = layer.cell.gate_values(K, S[1:])
    assert set(gates) == {"i", "f", "o"}
    for g in gates.values():
        assert set(g.unique().tolist()) <= {0.0, 1.0}
        assert 0 < g.mean() < 1  # both values occur
    # the straight-through backward: the hard sigmoid's slope 0.2 where |a| < 2.5
    _, _, g1 = grads(layer, x, s0, c0, lambda: engine_outputs(layer, x, s0, c0))
    _, _, g2 = grads(layer, x, s0, c0, lambda: reference.run("binary", layer, x, s0, c0))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert any(g.abs().max() > 0 for g in g1)


def _copy_torch_weights(layer, m, idx=0):
    """nn.LSTM/nn.GRU stores W_ih (G·H, in) with blocks in its own order; ours is x W."""
    def ours(t):
        return _ours(layer.cell, t)

    w_ih, w_hh = getattr(m, f"weight_ih_l{idx}"), getattr(m, f"weight_hh_l{idx}")
    b_ih, b_hh = getattr(m, f"bias_ih_l{idx}"), getattr(m, f"bias_hh_l{idx}")
    with torch.no_grad():
        layer.W.copy_(ours(w_ih).t())
        layer.R.copy_(ours(w_hh).t())
        if "n" in layer.cell.blocks:  # GRU: b_hn stays inside r ⊙ (R_n h' + b_hn)
            bh = ours(b_hh)
            layer.b.copy_(ours(b_ih) + torch.cat([bh[:2 * H], torch.zeros_like(bh[:H])]))
            layer.extra["b_Rn"].copy_(bh[2 * H:])
        else:
            layer.b.copy_(ours(b_ih) + ours(b_hh))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_matches_torch_builtin_float32(name, engine):
    """Two stacked layers against nn.LSTM / nn.GRU(num_layers=2) with copied weights:
    outputs, final states and gradients (input, initial states, every weight) to 1e-5."""
    torch.manual_seed(0)
    ref = (torch.nn.LSTM if name == "lstm" else torch.nn.GRU)(I, H, num_layers=2)
    layers = [RecurrentLayer(get_cell_class(name)(H), n_in, engine=engine) for n_in in (I, H)]
    for k, layer in enumerate(layers):
        _copy_torch_weights(layer, ref, k)
    x = torch.randn(T, B, I, requires_grad=True)
    h0 = torch.randn(2, B, H, requires_grad=True)
    c0 = torch.randn(2, B, H, requires_grad=True)
    w = torch.randn(T, B, H)
    if name == "lstm":
        y_ref, (hT_ref, cT_ref) = ref(x, (h0, c0))
    else:
        y_ref, hT_ref = ref(x, h0)
    inp, finals = x, []
    for k, layer in enumerate(layers):
        S, C = layer(inp, (h0[k], c0[k] if name == "lstm" else None))
        finals.append((S[-1], C[-1] if name == "lstm" else None))
        inp = S[1:]
    torch.testing.assert_close(inp, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack([f[0] for f in finals]), hT_ref, rtol=1e-5,
                               atol=1e-5)
    if name == "lstm":
        torch.testing.assert_close(torch.stack([f[1] for f in finals]), cT_ref, rtol=1e-5,
                                   atol=1e-5)
    leaves = [x, h0] + ([c0] if name == "lstm" else [])
    loss_ref = (y_ref * w).sum() + hT_ref.sum() + (cT_ref.sum() if name == "lstm" else 0)
    loss = (inp * w).sum() + sum(f[0].sum() for f in finals) + \
        (sum(f[1].sum() for f in finals) if name == "lstm" else 0)
    g_ref = torch.autograd.grad(loss_ref, leaves + list(ref.parameters()))
    g = torch.autograd.grad(loss, leaves + [p for l in layers for p in l.parameters()])
    for a, b in zip(g[:len(leaves)], g_ref[:len(leaves)], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # weight gradients, mapped into our layout
    g, g_ref = iter(g[len(leaves):]), iter(g_ref[len(leaves):])
    for layer in layers:
        ours = {n: next(g) for n, _ in layer.named_parameters()}
        w_ih, w_hh, b_ih, b_hh = (next(g_ref) for _ in range(4))
        torch.testing.assert_close(ours["W"], _ours(layer.cell, w_ih).t(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours["R"], _ours(layer.cell, w_hh).t(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours["b"], _ours(layer.cell, b_ih), rtol=1e-5, atol=1e-5)
        if name == "gru":
            torch.testing.assert_close(ours["extra.b_Rn"], _ours(layer.cell, b_hh)[2 * H:],
                                       rtol=1e-5, atol=1e-5)


def _ours(cell, t):
    """(G·H, ...) with blocks in torch's order -> our block order."""
    blocks = t.view(len(cell.torch_blocks), H, *t.shape[1:])
    return torch.cat([blocks[cell.torch_blocks.index(n)] for n in cell.blocks])


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(KeyError) as e:
        get_cell_class("lstn")
    msg = str(e.value)
    assert "'lstn'" in msg and all(n in msg for n in CELLS)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(CELLS))
def test_no_grad_path_equals_grad_path(name, engine):
    """Evaluation runs a leaner loop (nothing kept for backward): same numbers."""
    layer = make_layer(name, dtype=torch.float32, engine=engine)
    x, s0, c0 = inputs(layer, dtype=torch.float32)
    S1, C1 = layer(x, (s0, c0))
    with torch.no_grad():
        S2, C2 = layer(x, (s0, c0))
    torch.testing.assert_close(S1.detach(), S2, rtol=0, atol=0)
    torch.testing.assert_close(C1.detach(), C2, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(CELLS))
def test_fused_kernels_equal_the_torch_code_float32(name):
    """The C kernels and the torch code of the cell classes, same weights, float32."""
    out = []
    for engine in ENGINES:
        layer = make_layer(name, dtype=torch.float32, engine=engine)
        x, s0, c0 = inputs(layer, dtype=torch.float32)
        out.append(grads(layer, x, s0, c0, lambda l=layer, a=(x, s0, c0): engine_outputs(l, *a)))
    (h1, c1, g1), (h2, c2, g2) = out
    torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["peephole", "fgr", "gru", "rnn", "binary"])
def test_single_backward_reuses_buffers_without_changing_gradients(name):
    layer = make_layer(name, engine="fused")
    x, s0, c0 = inputs(layer)
    _, _, g1 = grads(layer, x, s0, c0, lambda: engine_outputs(layer, x, s0, c0))

    def under_single_backward():
        with single_backward():
            return engine_outputs(layer, x, s0, c0)

    _, _, g2 = grads(layer, x, s0, c0, under_single_backward)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_single_backward_graph_refuses_a_second_backward():
    layer = make_layer("lstm", engine="fused")
    x, s0, c0 = inputs(layer)
    with single_backward():
        h, _ = engine_outputs(layer, x, s0, c0)
    h.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="single_backward"):
        h.sum().backward()


def test_the_shipped_variants_all_run_on_a_fused_kernel():
    """A variant may lack a kernel (it then runs the torch step, see
    tests/test_engine_variants.py), but the shipped ones have one: benchmarks rely on it."""
    shipped = ("peephole", "lstm", "gru", "rnn", "nfg", "hard", "cifg", "noaf", "nig", "nog",
               "niaf", "fgr", "lstm1997", "binary")
    for name in shipped:
        layer = RecurrentLayer(get_cell_class(name)(H), I, engine="fused")
        assert layer.kernel(torch.float32, torch.device("cpu")) is not None, name
