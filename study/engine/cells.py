"""Every cell variant, by name: the registry CELLS (in display order), the GRU and the RNN,
and the listing of a variant's equations.

A variant is one class (study/engine/base.py's `Cell`): its equations, their derivative,
and every fact about it the engine, the C kernels, the probes and the report need. The
LSTM family and its variants live in study/engine/lstm.py, the activations in
study/engine/activations.py; this module re-exports them, so `study.engine.cells` is the
one place to import cells from. A new variant is one subclass and one line:

    @register("linear_cifg")
    class LinearCIFG(LSTMFamily):
        # no input activation, coupled gates
        g = IDENTITY
        forget = "coupled"

    python -m study.engine.cells VARIANT     # its equations, from the class itself
    python -m study.engine.cells --all

Conventions: `gru` is PyTorch's `nn.GRU`, h = (1 − u) ⊙ n + u ⊙ h' (char-rnn's update
gate is 1 − u).
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from study.engine.activations import (
    BINARY,
    HARD,
    IDENTITY,
    SIGMOID,
    TANH,
    Activation,
    BinaryStraightThrough,
    HardSigmoid,
    Identity,
    ScaledSigmoid,
    Sigmoid,
    Tanh,
)
from study.engine.base import Cell
from study.engine.lstm import (
    CIFG,
    FGR,
    LSTM,
    LSTM1997,
    NFG,
    NIAF,
    NIG,
    NOAF,
    NOG,
    Binary,
    Hard,
    LSTMFamily,
    Peephole,
)

__all__ = [  # the public API: code outside the engine imports cells from here
    "Cell", "LSTMFamily", "Peephole", "LSTM", "NFG", "NIG", "NOG", "NIAF", "NOAF", "CIFG",
    "FGR", "LSTM1997", "Hard", "Binary", "GRU", "RNN", "CELLS", "FAMILIES", "register",
    "variants", "get_cell_class", "listing", "main", "Activation", "Sigmoid", "Tanh",
    "Identity", "HardSigmoid", "BinaryStraightThrough", "ScaledSigmoid", "SIGMOID", "TANH",
    "IDENTITY", "HARD", "BINARY"]

FAMILIES = ("lstm", "gru", "rnn")


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

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None,
                 clip=None):
        """The step's derivative (see Cell.backward). With `clip` (Graves's clipping), d_n,
        the derivative with respect to n's whole argument a_n + r ⊙ (R_n h' + b_Rn), is
        clamped before d_r and dL/d(R_n h' + b_Rn) are derived from it; d_r and d_u too."""
        H = self.H
        r, u, n, hn = (kept[:, j * H:(j + 1) * H] for j in range(4))
        d_r, d_u, d_n = (da[:, j * H:(j + 1) * H] for j in range(3))
        torch.sub(s_prev, n, out=d_u).mul_(ds).mul_(u * (1 - u))  # dL/da_u
        torch.mul(ds, 1 - u, out=d_n).mul_(1 - n * n)  # dL/da_n
        if clip is not None:
            clip.clamp_(da[:, H:])  # d_u, d_n
        torch.mul(d_n, hn, out=d_r).mul_(r * (1 - r))  # dL/da_r
        if clip is not None:
            clip.clamp_(d_r)
        dha[:, :2 * H].copy_(da[:, :2 * H])
        torch.mul(d_n, r, out=dha[:, 2 * H:])  # dL/d(R_n h' + b_Rn)
        return ds * u, None

    def param_grads(self, dA, dHA, S, C, P):
        return (dHA[..., 2 * self.H:].sum((0, 1)),)

    def gate_values(self, kept, s):
        return {"r": kept[..., :self.H], "u": kept[..., self.H:2 * self.H]}

    @classmethod
    def equations(cls):
        return ["r = σ(W_r x + R_r h' + b_r)",
                "u = σ(W_u x + R_u h' + b_u)",
                "n = tanh(W_n x + r ⊙ (R_n h' + b_Rn) + b_n)",
                "h = (1 − u) ⊙ n + u ⊙ h'"]

    @classmethod
    def notes(cls):
        return super().notes() + ["u is the update gate (u = 1 keeps h'); char-rnn's "
                                  "update gate is 1 − u"]

    @classmethod
    def legend(cls):
        return super().legend() + ["b_Rn the recurrent bias of n (nn.GRU's b_hn)"]


class RNN(Cell):
    """The simple recurrent network of Karpathy15: h = tanh(W x + R h' + b)."""

    family = "rnn"
    blocks = ("h",)

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        torch.tanh(a, out=s)

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None,
                 clip=None):
        torch.mul(s, s, out=da).neg_().add_(1).mul_(ds)  # dL/da = (1 − h²) ⊙ dL/dh
        if clip is not None:
            clip.clamp_(da)
        return None, None

    def gate_values(self, kept, s):
        return {}

    @classmethod
    def equations(cls):
        return ["h = tanh(W x + R h' + b)"]

    @classmethod
    def legend(cls):
        return ["x the input", "h' the previous step's output",
                "W, R, b the input weights, recurrent weights and bias"]


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


def register(name: str, *, replace: bool = False):
    """Class decorator: add a Cell subclass to CELLS as `name`, last in display order.
    A name already taken by another class is refused unless `replace`."""

    def add(cls: type[Cell]) -> type[Cell]:
        if not (isinstance(cls, type) and issubclass(cls, Cell)):
            raise TypeError(f"register({name!r}): {cls!r} is not a Cell subclass")
        if cls.family not in FAMILIES:
            raise ValueError(f"register({name!r}): family {cls.family!r} is not one of "
                             f"{FAMILIES}")
        if CELLS.get(name, cls) is not cls and not replace:
            raise ValueError(f"cell variant {name!r} is already {CELLS[name].__name__}")
        CELLS[name] = cls
        return cls

    return add


def variants(family: str | None = None) -> list[str]:
    """Registered variant names in display order, optionally of one family."""
    return [n for n, c in CELLS.items() if family is None or c.family == family]


def get_cell_class(name: str) -> type[Cell]:
    try:
        return CELLS[name]
    except KeyError:
        raise KeyError(f"unknown cell variant {name!r}; known variants: "
                       f"{', '.join(CELLS)}") from None


def listing(name: str) -> list[str]:
    """What `python -m study.engine.cells NAME` prints: the variant's name, class and
    summary, its equations (one line each), notes, and the legend of its symbols."""
    cls = get_cell_class(name)
    lines = [f"{name}: {cls.__name__} ({cls.family} family). {cls.summary()}"]
    lines += [f"    {eq}" for eq in cls.equations()]
    root = next(c for c in cls.__mro__ if "equations" in c.__dict__)
    if any(m in c.__dict__ for c in cls.__mro__[:cls.__mro__.index(root)]
           for m in ("step", "backward")):
        lines.append(f"  warning: {cls.__name__} has its own step but inherits the equations "
                     f"of {root.__name__}; they describe the switches, not its step")
    for head, entries in (("notes", cls.notes()), ("legend", cls.legend())):
        lines += _wrap(head, entries)
    return lines


def _wrap(head: str, entries: list[str], width: int = 92) -> list[str]:
    """`head: a; b; c` wrapped between entries and at spaces inside long ones."""
    lines, line = [], f"  {head}:"
    for k, entry in enumerate(entries):
        text = entry + (";" if k < len(entries) - 1 else "")
        for word in re.split(r" (?!\S[ ;]|\S$)", text):  # a 1-character word stays attached
            if len(line) + 1 + len(word) > width and line.strip():
                lines.append(line)
                line = "   "
            line += " " + word
    return lines + [line] if entries else lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.engine.cells",
                                description="Print a cell variant's equations, generated "
                                            "from its class (compare with REFERENCES.md).")
    p.add_argument("variant", nargs="?", help=f"one of: {', '.join(CELLS)}")
    p.add_argument("--all", action="store_true", help="every variant, in display order")
    args = p.parse_args(argv)
    if args.all == (args.variant is not None):
        p.error("give one VARIANT or --all")
    if args.variant is not None and args.variant not in CELLS:
        p.error(f"unknown cell variant {args.variant!r}; known variants: {', '.join(CELLS)}")
    names = list(CELLS) if args.all else [args.variant]
    print("\n\n".join("\n".join(listing(n)) for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
