"""Every cell variant: its per-step equations and their derivative; the registry CELLS.

Symbols follow ../shared/REFERENCES.md: x input, h' and c' the previous output and cell
state, z the cell input, i f o the gates, c the cell state, h the output; σ the logistic
function, ⊙ the elementwise product. Dimension letters: B batch, H hidden units, G the
number of pre-activation blocks of a cell, Hr the width of the recurrent state s that
feeds back through R (s = h for every cell but `fgr`, whose gates feed back too).

A cell sees one time step. The engine (study/scan.py) computes the pre-activations

    a = x W + s' R + b        (B, G·H), blocks in the order of `cell.blocks`

and hands them to `step`, which finishes the step in place. `backward` takes dL/ds and
dL/dc of the step's outputs and returns the pre-activation gradient and what flows to the
previous step. Nothing outside this module asks which variant it runs.

Conventions: `lstm` is PyTorch's `nn.LSTM` (its blocks i f g o are our i f z o); `gru` is
PyTorch's `nn.GRU`, h = (1 − u) ⊙ n + u ⊙ h' (char-rnn's update gate is 1 − u).
"""

from __future__ import annotations

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------
# activations: each applies itself in place and says what its derivative needs


class Activation:
    """An elementwise nonlinearity y = φ(a). `apply_` overwrites `a` with what the backward
    pass keeps (usually y) and returns y; `value` and `grad` recover y and dy/da from it."""

    name = "?"
    kernel = "identity"  # its name in study/_fused.c

    def apply_(self, a: Tensor) -> Tensor:
        raise NotImplementedError

    def value(self, kept: Tensor) -> Tensor:
        return kept

    def grad(self, kept: Tensor) -> Tensor | None:  # None means 1
        raise NotImplementedError

    def __call__(self, a: Tensor) -> Tensor:
        return self.apply_(a.clone())

    def __repr__(self):
        return self.name


class Sigmoid(Activation):
    name = "σ"
    kernel = "sigmoid"

    def apply_(self, a):
        return a.sigmoid_()

    def grad(self, y):
        return y * (1 - y)


class Tanh(Activation):
    name = "tanh"
    kernel = "tanh"

    def apply_(self, a):
        return a.tanh_()

    def grad(self, y):
        return 1 - y * y


class Identity(Activation):
    name = "identity"

    def apply_(self, a):
        return a

    def grad(self, y):
        return None


class HardSigmoid(Activation):
    """max(0, min(1, 0.2·a + 0.5)), Theano's and classic Keras' recurrent-gate default."""

    name = "hard σ"
    kernel = "hard"

    def apply_(self, a):
        return a.mul_(0.2).add_(0.5).clamp_(0.0, 1.0)

    def grad(self, y):
        return ((y > 0) & (y < 1)).to(y.dtype) * 0.2


class BinaryStraightThrough(Activation):
    """Forward 1[a > 0], exactly 0 or 1; backward the hard sigmoid's slope, 0.2·1[|a| < 2.5]
    (straight-through estimator, Li18). Keeps the pre-activation a, not y."""

    name = "binary (STE)"
    kernel = "binary"

    def apply_(self, a):
        return (a > 0).to(a.dtype)  # `a` itself stays as it is: it is what is kept

    def value(self, a):
        return (a > 0).to(a.dtype)

    def grad(self, a):
        return (a.abs() < 2.5).to(a.dtype) * 0.2


class ScaledSigmoid(Activation):
    """y = scale·σ(a) − shift: Hochreiter97's g(x) = 4σ(x) − 2 and h(x) = 2σ(x) − 1.
    With y = m·σ − m/2, dy/da = m·σ(1 − σ) = (m² − 4y²) / (4m)."""

    kernel = "scaled"

    def __init__(self, m: float):
        self.m = m
        self.name = f"{m:g}σ−{m / 2:g}"

    def apply_(self, a):
        return a.sigmoid_().mul_(self.m).sub_(self.m / 2)

    def grad(self, y):
        return (self.m * self.m - 4 * y * y) / (4 * self.m)


SIGMOID, TANH, IDENTITY, HARD, BINARY = (Sigmoid(), Tanh(), Identity(), HardSigmoid(),
                                         BinaryStraightThrough())


def _times(x: Tensor, d: Tensor | None) -> Tensor:
    return x if d is None else x.mul_(d)


# ---------------------------------------------------------------------------------------
# the cell interface


class Cell:
    """One recurrent step. Subclasses set the class attributes and the equations."""

    blocks: tuple[str, ...]  # pre-activation blocks, in the order of W's and R's columns
    has_cell_state = False  # carries c besides s
    split_recurrent = False  # step needs s'R apart from xW + b (GRU's r ⊙ (R_n h' + b))
    gates: tuple[str, ...] = ()  # gate names the probes can read
    supports_truncated_gradient = False
    torch_blocks: tuple[str, ...] | None = None  # block order of the nn.LSTM/nn.GRU twin
    discrete_gates = False  # gates are exactly 0 or 1 (the saturation plot says so)
    family = "?"  # "lstm" | "gru" | "rnn": which published family the report groups it with

    def __init__(self, hidden_size: int, truncated_gradient: bool = False):
        if truncated_gradient and not self.supports_truncated_gradient:
            raise ValueError(f"{type(self).__name__} has no truncated gradient")
        self.H = hidden_size
        self.truncated_gradient = truncated_gradient

    # sizes
    @property
    def G(self) -> int:
        return len(self.blocks)

    @property
    def state_size(self) -> int:  # Hr
        return self.H

    @property
    def saved_size(self) -> int:  # per-step width the backward keeps, besides s and c
        return self.G * self.H

    def extra_params(self) -> dict[str, tuple[int, ...]]:
        """Parameters besides W, R, b (peepholes, GRU's recurrent n-bias): name -> shape."""
        return {}

    def recurrent_mask(self) -> Tensor | None:
        """A 0/1 mask of R's structural zeros, or None when R is dense."""
        return None

    def block(self, t: Tensor, name: str) -> Tensor | None:
        """The columns of block `name` in a (..., G·H) tensor; None if the cell lacks it."""
        if name not in self.blocks:
            return None
        k = self.blocks.index(name)
        return t[..., k * self.H:(k + 1) * self.H]

    # the step
    def step(self, a, ha, s_prev, c_prev, s, c, P) -> None:
        """Finish step t in place. a: (B, G·H) pre-activations, overwritten with what the
        backward keeps (`saved_size` wide); ha: s'R when `split_recurrent`, else None;
        s, c: outputs to fill; P: the extra parameters."""
        raise NotImplementedError

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None):
        """Given ds = dL/ds_t (total) and dc, the part of dL/dc_t that came from step t+1
        (may be modified), fill da = dL/d(xW + b) and, for `split_recurrent`,
        dha = dL/d(s'R); return (the direct part of dL/ds_{t-1} or None, dL/dc_{t-1} or
        None). The engine adds dha·Rᵀ. dc_total, if given, receives dL/dc_t by every path
        (for the error-flow probe)."""
        raise NotImplementedError

    def param_grads(self, dA, dHA, S, C, P) -> tuple[Tensor, ...]:
        """Gradients of the extra parameters from the whole sequence: dA, dHA (T, B, G·H);
        S (T+1, B, Hr); C (T+1, B, H)."""
        return ()

    def gate_values(self, kept: Tensor, s: Tensor) -> dict[str, Tensor]:
        """The named gate activations of one or many steps, from what `step` kept."""
        raise NotImplementedError

    def init_bias(self, b: Tensor, forget_bias: float) -> None:
        """Set the forget-gate bias (Jozefowicz15); cells without one ignore it."""

    def kernel_spec(self) -> dict | None:
        """What study.engine.fused needs to run this cell's step in C, or None: then the torch
        code above runs. A cell whose equations the kernels do not cover returns None."""
        return None

    def _own_equations(self, family: type) -> bool:
        return type(self).step is family.step and type(self).backward is family.backward


# ---------------------------------------------------------------------------------------
# the LSTM family: one step, written once; each variant changes one thing


class LSTMFamily(Cell):
    """The vanilla LSTM of Greff15 (peepholes and a forget gate), the baseline:

        z = g(W_z x + R_z h' + b_z)
        i = σ(W_i x + R_i h' + p_i ⊙ c' + b_i)
        f = σ(W_f x + R_f h' + p_f ⊙ c' + b_f)
        c = f ⊙ c' + i ⊙ z
        o = σ(W_o x + R_o h' + p_o ⊙ c + b_o)
        h = o ⊙ k(c)                      g = k = tanh

    Variants override one of the attributes below.
    """

    family = "lstm"
    has_cell_state = True
    peepholes = True
    input_gate = True
    forget = "gate"  # "gate": f = σ(..); "none": f = 1; "coupled": f = 1 − i
    output_gate = True
    gate_recurrence = False  # FGR: gates also see i', f', o'
    sigma: Activation = SIGMOID  # gate nonlinearity
    g: Activation = TANH  # cell-input activation
    k: Activation = TANH  # output activation

    def __init__(self, hidden_size, truncated_gradient=False):
        super().__init__(hidden_size, truncated_gradient)
        names = [n for n, on in (("i", self.input_gate), ("f", self.forget == "gate"),
                                 ("o", self.output_gate)) if on]
        self.gates = tuple(names) + (("f",) if self.forget == "coupled" else ())
        self.blocks = tuple(names) + ("z",)
        self._peep_rows = tuple(n for n in ("i", "f", "o") if n in self.blocks) \
            if self.peepholes else ()

    @property
    def state_size(self):
        return self.H * (4 if self.gate_recurrence else 1)

    def extra_params(self):
        return {"peep": (len(self._peep_rows), self.H)} if self.peepholes else {}

    def recurrent_mask(self):
        if not self.gate_recurrence:
            return None
        # rows: h' then i', f', o' (H each); columns: the blocks. z sees only h'.
        m = torch.ones(4 * self.H, self.G * self.H)
        m[self.H:, self.blocks.index("z") * self.H:] = 0
        return m

    def _peep(self, P, name):
        return P[0][self._peep_rows.index(name)] if name in self._peep_rows else None

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        H = self.H
        a_i, a_f, a_o, a_z = (self.block(a, n) for n in ("i", "f", "o", "z"))
        if self.peepholes:  # input and forget gates peek at c'
            for a_gate, name in ((a_i, "i"), (a_f, "f")):
                if a_gate is not None:
                    a_gate.addcmul_(c_prev, self._peep(P, name))
        i = self.sigma.apply_(a_i) if a_i is not None else None  # None: the gate is 1
        f = self.sigma.apply_(a_f) if a_f is not None else None
        z = self.g.apply_(a_z)
        # c = f ⊙ c' + i ⊙ z
        if self.forget == "coupled":  # f = 1 − i: c = c' + i ⊙ (z − c')
            torch.sub(z, c_prev, out=c).mul_(i).add_(c_prev)
        else:
            torch.mul(c_prev, f, out=c) if f is not None else c.copy_(c_prev)
            c.addcmul_(i, z) if i is not None else c.add_(z)
        h = s[:, :H]
        kc = self.k.apply_(torch.clone(c)) if not isinstance(self.k, Identity) else c
        if a_o is not None:
            if self.peepholes:  # the output gate peeks at the new c
                a_o.addcmul_(c, self._peep(P, "o"))
            o = self.sigma.apply_(a_o)
            torch.mul(o, kc, out=h)
        else:
            h.copy_(kc)
        if self.gate_recurrence:  # s = [h, i, f, o]
            for j, gate in enumerate((i, f, o if a_o is not None else None)):
                s[:, (j + 1) * H:(j + 2) * H].copy_(gate)

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None):
        H = self.H
        dh = ds[:, :H]
        k_i, k_f, k_o, k_z = (self.block(kept, n) for n in ("i", "f", "o", "z"))
        d_i, d_f, d_o, d_z = (self.block(da, n) for n in ("i", "f", "o", "z"))
        i = self.sigma.value(k_i) if k_i is not None else None
        z = self.g.value(k_z)
        kc = self.k.apply_(c.clone())
        # h = o ⊙ k(c)
        if k_o is not None:
            o = self.sigma.value(k_o)
            torch.mul(dh, kc, out=d_o)  # dL/do
            if self.gate_recurrence:
                d_o.add_(ds[:, 3 * H:])
            _times(d_o, self.sigma.grad(k_o))  # dL/da_o
            dc.add_(_times(dh * o, self.k.grad(kc)))
            if self.peepholes:
                dc.addcmul_(d_o, self._peep(P, "o"))
        else:
            dc.add_(_times(dh.clone(), self.k.grad(kc)))
        if dc_total is not None:
            dc_total.copy_(dc)
        # c = f ⊙ c' + i ⊙ z
        if self.forget == "coupled":  # c = c' + i ⊙ (z − c')
            torch.sub(z, c_prev, out=d_i).mul_(dc)
            f = None
        else:
            if i is not None:
                torch.mul(dc, z, out=d_i)
            f = self.sigma.value(k_f) if k_f is not None else None
            if f is not None:
                torch.mul(dc, c_prev, out=d_f)
        if self.gate_recurrence:
            d_i.add_(ds[:, H:2 * H])
            d_f.add_(ds[:, 2 * H:3 * H])
        if i is not None:
            _times(d_i, self.sigma.grad(k_i))
        if f is not None:
            _times(d_f, self.sigma.grad(k_f))
        _times(torch.mul(dc, i, out=d_z) if i is not None else d_z.copy_(dc), self.g.grad(k_z))
        # what reaches c'
        if self.forget == "coupled":
            dc_prev = dc * (1 - i)
        elif f is not None:
            dc_prev = dc.mul_(f)
        else:
            dc_prev = dc
        if self.peepholes:
            for d_gate, name in ((d_i, "i"), (d_f, "f")):
                if d_gate is not None:
                    dc_prev.addcmul_(d_gate, self._peep(P, name))
        return None, dc_prev

    def param_grads(self, dA, dHA, S, C, P):
        if not self.peepholes:
            return ()
        rows = [(self.block(dA, n) * (C[1:] if n == "o" else C[:-1])).sum((0, 1))
                for n in self._peep_rows]
        return (torch.stack(rows),)

    def gate_values(self, kept, s):
        out = {}
        for name in ("i", "f", "o"):
            k = self.block(kept, name)
            if k is not None:
                out[name] = self.sigma.value(k)
        if self.forget == "coupled":
            out["f"] = 1 - out["i"]
        return out

    def init_bias(self, b, forget_bias):
        f = self.block(b, "f")
        if f is not None:
            f.fill_(forget_bias)

    def kernel_spec(self):
        if not self._own_equations(LSTMFamily):
            return None
        from study.engine.fused import ACT, FORGET

        def offset(n):
            return self.blocks.index(n) * self.H if n in self.blocks else -1

        def peep_row(n):
            return self._peep_rows.index(n) if n in self._peep_rows else -1

        return {"family": "lstm", "oi": offset("i"), "of": offset("f"), "oo": offset("o"),
                "oz": offset("z"), "pi": peep_row("i"), "pf": peep_row("f"),
                "po": peep_row("o"), "forget": FORGET[self.forget],
                "sigma": ACT[self.sigma.kernel], "g": ACT[self.g.kernel],
                "k": ACT[self.k.kernel], "gm": getattr(self.g, "m", 0.0),
                "km": getattr(self.k, "m", 0.0), "fgr": int(self.gate_recurrence)}


class Peephole(LSTMFamily):
    """Greff15's vanilla LSTM "V" (Gers00's peepholes with Gers99's forget gate): the
    baseline of the ablation. Equations: see LSTMFamily."""


class LSTM(LSTMFamily):
    """No peepholes (Greff15 "NP"), p = 0: the LSTM of nn.LSTM, char-rnn and Karpathy15.

        i = σ(W_i x + R_i h' + b_i)   f = σ(W_f x + R_f h' + b_f)   o = σ(W_o x + R_o h' + b_o)
        z = tanh(W_z x + R_z h' + b_z)   c = f ⊙ c' + i ⊙ z   h = o ⊙ tanh(c)
    """

    peepholes = False
    torch_blocks = ("i", "f", "z", "o")


class NFG(LSTMFamily):
    """No forget gate (Greff15 "NFG"): f = 1, so c = c' + i ⊙ z (the pre-Gers99 carousel,
    keeping the peepholes of i and o)."""

    forget = "none"


class NIG(LSTMFamily):
    """No input gate (Greff15 "NIG"): i = 1, so c = f ⊙ c' + z."""

    input_gate = False


class NOG(LSTMFamily):
    """No output gate (Greff15 "NOG"): o = 1, so h = tanh(c)."""

    output_gate = False


class NIAF(LSTMFamily):
    """No input activation function (Greff15 "NIAF"): g = identity, z = W_z x + R_z h' + b_z."""

    g = IDENTITY


class NOAF(LSTMFamily):
    """No output activation function (Greff15 "NOAF"): k = identity, h = o ⊙ c."""

    k = IDENTITY


class CIFG(LSTMFamily):
    """Coupled input and forget gate (Greff15 "CIFG"): f = 1 − i, so
    c = (1 − i) ⊙ c' + i ⊙ z. The input gate keeps its peephole."""

    forget = "coupled"


class FGR(LSTMFamily):
    """Full gate recurrence (Greff15 "FGR"): each gate also sees all three gates of the
    previous step, e.g. i = σ(W_i x + R_i h' + R_ii i' + R_fi f' + R_oi o' + p_i ⊙ c' + b_i);
    z sees only h'. The recurrent state is s = [h, i, f, o] and R's z-columns are zero
    below the h' rows (a fixed mask)."""

    gate_recurrence = True


class LSTM1997(LSTMFamily):
    """Hochreiter97's original LSTM: input and output gates only (f = 1), no peepholes,
    g(x) = 4σ(x) − 2, k(x) = 2σ(x) − 1:

        z = 4σ(W_z x + R_z h' + b_z) − 2   i = σ(..)   o = σ(..)
        c = c' + i ⊙ z                     h = o ⊙ (2σ(c) − 1)

    With `truncated_gradient`, as in the paper, errors reaching the gates and the cell
    input are not sent back through R to h'; only the cell state carries error back in
    time (the constant error carousel)."""

    peepholes = False
    forget = "none"
    g = ScaledSigmoid(4.0)
    k = ScaledSigmoid(2.0)
    supports_truncated_gradient = True


class Hard(LSTMFamily):
    """Hard-sigmoid gates, σ(a) = max(0, min(1, 0.2·a + 0.5)) (Theano's and classic Keras'
    default for recurrent gates); otherwise the baseline, peepholes included."""

    sigma = HARD


class Binary(LSTMFamily):
    """Binary gates (Li18): i, f, o are exactly 0 or 1 in the forward pass, 1[a > 0]; the
    backward pass uses the hard sigmoid's slope 0.2·1[|a| < 2.5] (straight-through
    estimator). Otherwise the baseline, peepholes included."""

    sigma = BINARY
    discrete_gates = True


# ---------------------------------------------------------------------------------------
# GRU and RNN


class GRU(Cell):
    """The GRU of Cho14 in PyTorch's convention (nn.GRU):

        r = σ(W_r x + R_r h' + b_r)
        u = σ(W_u x + R_u h' + b_u)
        n = tanh(W_n x + r ⊙ (R_n h' + b_Rn) + b_n)
        h = (1 − u) ⊙ n + u ⊙ h'

    u is the update gate (u = 1 keeps h'); char-rnn's update gate is 1 − u.
    Kept per step: r, u, n and R_n h' + b_Rn.
    """

    family = "gru"
    blocks = ("r", "u", "n")
    gates = ("r", "u")
    split_recurrent = True
    torch_blocks = ("r", "u", "n")

    @property
    def saved_size(self):
        return 4 * self.H

    def extra_params(self):
        return {"b_Rn": (self.H,)}

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        H = self.H
        kept = a  # a is (B, 4H): [xW + b for r u n | free]; we fill [r, u, n, R_n h' + b_Rn]
        ru = kept[:, :2 * H].add_(ha[:, :2 * H]).sigmoid_()
        r, u = ru[:, :H], ru[:, H:]
        hn = torch.add(ha[:, 2 * H:], P[0], out=kept[:, 3 * H:])
        n = kept[:, 2 * H:3 * H].addcmul_(r, hn).tanh_()
        # h = (1 − u) ⊙ n + u ⊙ h' = n + u ⊙ (h' − n)
        torch.sub(s_prev, n, out=s).mul_(u).add_(n)

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None):
        H = self.H
        r, u, n, hn = (kept[:, j * H:(j + 1) * H] for j in range(4))
        d_r, d_u, d_n = (da[:, j * H:(j + 1) * H] for j in range(3))
        torch.sub(s_prev, n, out=d_u).mul_(ds).mul_(u * (1 - u))  # dL/da_u
        torch.mul(ds, 1 - u, out=d_n).mul_(1 - n * n)  # dL/da_n
        torch.mul(d_n, hn, out=d_r).mul_(r * (1 - r))  # dL/da_r
        dha[:, :2 * H].copy_(da[:, :2 * H])
        torch.mul(d_n, r, out=dha[:, 2 * H:])  # dL/d(R_n h' + b_Rn)
        return ds * u, None

    def param_grads(self, dA, dHA, S, C, P):
        return (dHA[..., 2 * self.H:].sum((0, 1)),)

    def gate_values(self, kept, s):
        return {"r": kept[..., :self.H], "u": kept[..., self.H:2 * self.H]}

    def kernel_spec(self):
        return {"family": "gru"} if self._own_equations(GRU) else None


class RNN(Cell):
    """The simple recurrent network of Karpathy15: h = tanh(W x + R h' + b)."""

    family = "rnn"
    blocks = ("h",)

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        torch.tanh(a, out=s)

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None):
        torch.mul(s, s, out=da).neg_().add_(1).mul_(ds)
        return None, None

    def gate_values(self, kept, s):
        return {}

    def kernel_spec(self):
        return {"family": "rnn"} if self._own_equations(RNN) else None


# The registry, in display order: the order of every table, legend and listing (the
# ablation's six first, then the rest of Greff15's variants and the extensions).
CELLS: dict[str, type[Cell]] = {
    "peephole": Peephole,
    "lstm": LSTM,
    "gru": GRU,
    "rnn": RNN,
    "nfg": NFG,
    "hard": Hard,
    "cifg": CIFG,
    "noaf": NOAF,
    "nig": NIG,
    "nog": NOG,
    "niaf": NIAF,
    "fgr": FGR,
    "lstm1997": LSTM1997,
    "binary": Binary,
}


def variants(family: str | None = None) -> list[str]:
    """Registered variant names in display order, optionally of one family."""
    return [n for n, c in CELLS.items() if family is None or c.family == family]


def get_cell_class(name: str) -> type[Cell]:
    try:
        return CELLS[name]
    except KeyError:
        raise KeyError(f"unknown cell variant {name!r}; known variants: "
                       f"{', '.join(CELLS)}") from None
