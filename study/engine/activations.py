"""The elementwise nonlinearities of the cells: how each applies itself in place, what its
derivative needs, its name in the C kernels, and how it is written in an equation.

Owns `Activation` and its instances SIGMOID, TANH, IDENTITY, HARD, BINARY, and
`ScaledSigmoid(m)` (Hochreiter97's squashing functions).
"""

from __future__ import annotations

from torch import Tensor


class Activation:
    """An elementwise nonlinearity y = φ(a). `apply_` overwrites `a` with what the backward
    pass keeps (usually y) and returns y; `value` and `grad` recover y and dy/da from it.
    `kernel` names it for study.engine.fused (None: the C kernels do not cover it);
    `show(arg)` writes φ(arg) in REFERENCES.md's notation and `legend` says what that is."""

    name = "?"
    kernel: str | None = None
    legend: str | None = None  # an entry for the equations' legend: what show() means
    note: str | None = None  # what the equations do not show (e.g. a different backward)
    compound = False  # show() is a sum: parenthesise it inside a product
    logistic = False  # show() writes σ, the logistic function

    def apply_(self, a: Tensor) -> Tensor:
        raise NotImplementedError

    def value(self, kept: Tensor) -> Tensor:
        return kept

    def grad(self, kept: Tensor) -> Tensor | None:  # None means 1
        raise NotImplementedError

    def show(self, arg: str) -> str:
        return f"{self.name}({arg})"

    def factor(self, arg: str) -> str:
        """show(arg) as an operand of ⊙."""
        text = self.show(arg)
        return f"({text})" if self.compound else text

    def __repr__(self):
        return self.name


class Sigmoid(Activation):
    name = "σ"
    kernel = "sigmoid"
    logistic = True

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
    kernel = "identity"

    def apply_(self, a):
        return a

    def grad(self, y):
        return None

    def show(self, arg):
        return arg

    def factor(self, arg):
        return arg if " " not in arg else f"({arg})"


class HardSigmoid(Activation):
    """max(0, min(1, 0.2·a + 0.5)), Theano's and classic Keras' recurrent-gate default."""

    name = "hardσ"
    kernel = "hard"
    legend = "hardσ(a) = max(0, min(1, 0.2·a + 0.5)), the hard sigmoid"

    def apply_(self, a):
        return a.mul_(0.2).add_(0.5).clamp_(0.0, 1.0)

    def grad(self, y):
        return ((y > 0) & (y < 1)).to(y.dtype) * 0.2


class BinaryStraightThrough(Activation):
    """Forward 1[a > 0], exactly 0 or 1; backward the hard sigmoid's slope, 0.2·1[|a| < 2.5]
    (straight-through estimator, Li18). Keeps the pre-activation a, not y."""

    name = "binary (STE)"
    kernel = "binary"
    legend = "1[a > 0] is 1 where a > 0, else 0"
    note = ("the gates 1[· > 0] are exactly 0 or 1 in the forward pass; the backward pass "
            "uses the hard sigmoid's slope 0.2·1[|a| < 2.5] in their place (straight-through "
            "estimator, Li18)")

    def apply_(self, a):
        return (a > 0).to(a.dtype)  # `a` itself stays as it is: it is what is kept

    def value(self, a):
        return (a > 0).to(a.dtype)

    def grad(self, a):
        return (a.abs() < 2.5).to(a.dtype) * 0.2

    def show(self, arg):
        return f"1[{arg} > 0]"


class ScaledSigmoid(Activation):
    """y = scale·σ(a) − shift: Hochreiter97's g(x) = 4σ(x) − 2 and h(x) = 2σ(x) − 1.
    With y = m·σ − m/2, dy/da = m·σ(1 − σ) = (m² − 4y²) / (4m)."""

    kernel = "scaled"
    compound = True
    logistic = True

    def __init__(self, m: float):
        self.m = m
        self.name = f"{m:g}σ−{m / 2:g}"

    def apply_(self, a):
        return a.sigmoid_().mul_(self.m).sub_(self.m / 2)

    def grad(self, y):
        return (self.m * self.m - 4 * y * y) / (4 * self.m)

    def show(self, arg):
        return f"{self.m:g}σ({arg}) − {self.m / 2:g}"


SIGMOID, TANH, IDENTITY, HARD, BINARY = (Sigmoid(), Tanh(), Identity(), HardSigmoid(),
                                         BinaryStraightThrough())
