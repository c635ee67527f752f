"""The LSTM family: one step, forward and backward, written once (`LSTMFamily`), and its
variants, each a subclass that changes one switch of Greff15's vanilla LSTM.

The switches (peepholes, input_gate, forget, output_gate, gate_recurrence, and the
activations sigma, g, k) are the variant: the torch step below reads them, the C kernels'
description is derived from them (study/engine/fused.py), and so are the printed equations
(`LSTMFamily.equations`). A variant defined by switches alone needs no other code.

Conventions: `lstm` is PyTorch's `nn.LSTM` (its blocks i f g o are our i f z o).
"""

from __future__ import annotations

import torch
from torch import Tensor

from study.engine.activations import (
    BINARY,
    HARD,
    IDENTITY,
    SIGMOID,
    TANH,
    Activation,
    Identity,
    ScaledSigmoid,
)
from study.engine.base import Cell

FORGET_KINDS = ("gate", "none", "coupled")
SWITCHES = ("peepholes", "input_gate", "forget", "output_gate", "gate_recurrence", "sigma",
            "g", "k")


def _times(x: Tensor, d: Tensor | None) -> Tensor:
    return x if d is None else x.mul_(d)


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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        problem = cls.switch_problem()
        if problem:
            raise TypeError(f"{cls.__name__}: {problem}")

    @classmethod
    def switch_problem(cls) -> str | None:
        """Why the switches do not make an LSTM, or None."""
        if cls.forget not in FORGET_KINDS:
            return f"forget = {cls.forget!r}, not one of {FORGET_KINDS}"
        if cls.forget == "coupled" and not cls.input_gate:
            return "a coupled forget gate (f = 1 − i) needs the input gate"
        if cls.gate_recurrence and not (cls.input_gate and cls.forget == "gate"
                                        and cls.output_gate):
            return "full gate recurrence needs all three gates i, f, o"
        for role in ("sigma", "g", "k"):
            if not isinstance(getattr(cls, role), Activation):
                return f"{role} is not an Activation"
        return None

    def __init__(self, hidden_size, truncated_gradient=False):
        super().__init__(hidden_size, truncated_gradient)
        names = [n for n, on in (("i", self.input_gate), ("f", self.forget == "gate"),
                                 ("o", self.output_gate)) if on]
        self.gates = tuple(names) + (("f",) if self.forget == "coupled" else ())
        self.blocks = tuple(names) + ("z",)
        # the gates with a peephole, in the order of the rows of the parameter `peep`
        self.peep_rows = tuple(n for n in ("i", "f", "o") if n in self.blocks) \
            if self.peepholes else ()

    @property
    def state_size(self):
        return self.H * (4 if self.gate_recurrence else 1)

    def extra_params(self):
        return {"peep": (len(self.peep_rows), self.H)} if self.peepholes else {}

    def recurrent_mask(self):
        if not self.gate_recurrence:
            return None
        # rows: h' then i', f', o' (H each); columns: the blocks. z sees only h'.
        m = torch.ones(4 * self.H, self.G * self.H)
        m[self.H:, self.blocks.index("z") * self.H:] = 0
        return m

    def _peep(self, P, name):
        return P[0][self.peep_rows.index(name)] if name in self.peep_rows else None

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

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None,
                 clip=None):
        """The step's derivative (see Cell.backward). With `clip` (Graves's clipping), d_o
        is clamped before its peephole term p_o ⊙ d_o joins dL/dc, and d_i, d_f, d_z before
        theirs reach dL/dc' and before the engine forms da Rᵀ and the weight gradients."""
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
            if clip is not None:
                clip.clamp_(d_o)
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
        if clip is not None:  # d_i, d_f, d_z (d_o is inside [−θ, θ] already: not recounted)
            clip.clamp_(da)
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
                for n in self.peep_rows]
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

    # the equations, generated from the switches
    @classmethod
    def summary(cls):
        if cls.__doc__:
            return super().summary()
        changed = [f"{n} = {getattr(cls, n)!r}" for n in SWITCHES
                   if getattr(cls, n) != getattr(LSTMFamily, n)]
        return "The baseline LSTMFamily with " + (", ".join(changed) or "no change") + "."

    @classmethod
    def equations(cls):
        def pre(n):  # the pre-activation of block n
            terms = [f"W_{n} x", f"R_{n} h'"]
            if cls.gate_recurrence and n != "z":  # R_fi: from f' to i
                terms += [f"R_{src}{n} {src}'" for src in ("i", "f", "o")]
            if cls.peepholes and n != "z":  # o peeks at the new c, i and f at c'
                terms.append(f"p_{n} ⊙ " + ("c" if n == "o" else "c'"))
            return " + ".join(terms + [f"b_{n}"])

        def gate(n, on):
            return f"{n} = {cls.sigma.show(pre(n)) if on else '1'}"

        f = {"gate": cls.sigma.show(pre("f")), "none": "1", "coupled": "1 − i"}[cls.forget]
        keep = {"gate": "f ⊙ c'", "none": "c'", "coupled": "(1 − i) ⊙ c'"}[cls.forget]
        write = "i ⊙ z" if cls.input_gate else "z"
        h = f"o ⊙ {cls.k.factor('c')}" if cls.output_gate else cls.k.show("c")
        return [f"z = {cls.g.show(pre('z'))}", gate("i", cls.input_gate), f"f = {f}",
                f"c = {keep} + {write}", gate("o", cls.output_gate), f"h = {h}"]

    @classmethod
    def notes(cls):
        notes = super().notes()
        for act in dict.fromkeys((cls.g, cls.sigma, cls.k)):
            if act.note and act.note not in notes:
                notes.append(act.note)
        if cls.gate_recurrence:
            notes.append("the recurrent state is s = [h, i, f, o]: R_fi is the block of R "
                         "from f' to i; z sees h' only (R's other rows for z are fixed at 0)")
        return notes

    @classmethod
    def legend(cls):
        out = super().legend()
        out[1:2] = ["h', c' the previous step's output and cell state"]
        if cls.peepholes:
            out.insert(3, "p_· the peephole weights of gate ·")
        if not any(act.logistic for act in (cls.g, cls.sigma, cls.k)):
            out.remove("σ the logistic function")
        for act in dict.fromkeys((cls.g, cls.sigma, cls.k)):
            if act.legend and act.legend not in out:
                out.append(act.legend)
        return out


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
