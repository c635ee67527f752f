"""The cell interface: `Cell`, what one recurrent step is and every fact about a variant the
rest of the harness reads from its class (sizes, blocks, gates, family, discrete gates,
truncated gradient, the equations it prints).

Symbols follow ../shared/REFERENCES.md: x input, h' and c' the previous output and cell
state, z the cell input, i f o the gates, c the cell state, h the output; σ the logistic
function, ⊙ the elementwise product. Dimension letters: B batch, H hidden units, G the
number of pre-activation blocks of a cell, Hr the width of the recurrent state s that
feeds back through R (s = h for every cell but `fgr`, whose gates feed back too).

A cell sees one time step. The engine (study/engine/scan.py) computes the pre-activations

    a = x W + s' R + b        (B, G·H), blocks in the order of `cell.blocks`

and hands them to `step`, which finishes the step in place. `backward` takes dL/ds and
dL/dc of the step's outputs and returns the pre-activation gradient and what flows to the
previous step. Nothing outside the cell classes asks which variant it runs.
"""

from __future__ import annotations

import re

from torch import Tensor

_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s")


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

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None,
                 clip=None):
        """Given ds = dL/ds_t (total) and dc, the part of dL/dc_t that came from step t+1
        (may be modified), fill da = dL/d(xW + b) and, for `split_recurrent`,
        dha = dL/d(s'R); return (the direct part of dL/ds_{t-1} or None, dL/dc_{t-1} or
        None). The engine adds dha·Rᵀ. dc_total, if given, receives dL/dc_t by every path
        (for the error-flow probe).

        clip, when given (study.engine.scan.PreactClip, Graves's clipping): the derivative
        with respect to each block's full pre-activation (the whole argument of its
        activation, peephole terms included) is clamped to [−clip.theta, clip.theta] by
        `clip.clamp_(d)`, which counts, as soon as it is formed and before anything is
        derived from it (peephole terms of dc, other blocks, da, dha, the direct part of
        ds_{t-1}). A cell that overrides `backward` without this parameter cannot run
        under clipping."""
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

    # what the variant computes, in words (python -m study.engine.cells VARIANT)
    @classmethod
    def equations(cls) -> list[str]:
        """The step's equations, one line per gate or quantity, in REFERENCES.md's
        notation and order. A class that writes its own `step` writes these too."""
        raise NotImplementedError(f"{cls.__name__} declares no equations")

    @classmethod
    def notes(cls) -> list[str]:
        """What the equations do not show (gradient options, state layout)."""
        if not cls.supports_truncated_gradient:
            return []
        return ["with model.truncated_gradient, errors reaching the gates and the cell "
                "input are not sent back through R to h' (the truncated gradient of "
                "Hochreiter97); only the cell state carries error back in time"]

    @classmethod
    def legend(cls) -> list[str]:
        """The symbols of `equations`, one entry each."""
        return ["x the input", "h' the previous step's output",
                "W_·, R_·, b_· the input weights, recurrent weights and bias of block ·",
                "σ the logistic function", "⊙ the elementwise product"]

    @classmethod
    def summary(cls) -> str:
        """The first sentence of the class's docstring, on one line."""
        doc = (cls.__doc__ or "").strip()
        if not doc:
            return f"(no docstring; a subclass of {cls.__mro__[1].__name__})"
        first = " ".join(doc.split("\n\n")[0].split())
        end = _SENTENCE_END.search(first)
        first = first if end is None else first[:end.start() + 1]
        return first[:-1] + "." if first.endswith(":") else first
