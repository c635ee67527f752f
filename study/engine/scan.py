"""The recurrence engine: one time loop, forward and backward, for every cell.

Letters: T time, B batch, V vocabulary, H hidden units, G pre-activation blocks,
Hr recurrent width, I input width.

    S, C = scan(cell, x, W, b, R, s0, c0, P)

x is (T, B, I) floats, or (T, B) token ids when `onehot` (then x W is a row lookup of
W (V, G·H)). The engine writes the input projections of all steps, x W + b, with one
matmul straight into its per-step buffer K (T, B, G·H); each step adds s_{t−1} R in place
(one GEMM) and lets the cell finish the step, overwriting K[t] with what its backward
needs. It returns the whole state sequences S (T+1, B, Hr) and C (T+1, B, H) (index 0 is
the initial state; C is empty for cells without one), so a layer's output, its final
state and the state at any step for truncated BPTT are views of them.

The backward pass is written by hand: per step the cell's elementwise derivative and one
GEMM, ds_{t−1} += da_t Rᵀ; after the loop the weight gradients are large GEMMs over all
steps at once, dR = Σ_t s_{t−1}ᵀ da_t, dW = xᵀ dA, dx = dA Wᵀ.

Inside `with clip_preactivations(θ) as clip:` (Graves's clipping, `train.clip: preact`),
the backward passes of the scans recorded inside clip the derivative of the loss with
respect to every pre-activation (the full argument of each gate's σ and of the cell
input's g, peephole terms included) to [−θ, θ] at every step, in the cell's backward,
right after it is formed and before anything is derived from it:

    da_t ← clamp(dL/da_t, −θ, θ)      then  ds_{t−1} = da_t Rᵀ (+ direct terms),
                                            dc_{t−1}, dc_t's peephole terms, dR, dW, db, dP, dx

— what autograd computes with `a.register_hook(lambda g: g.clamp(-θ, θ))` on each
pre-activation. The parameter gradients are not clipped after the fact. `clip.clamped`
counts the clamped components. The recorder is captured when the scan runs forward, so
the backward after the `with` block clips; outside it nothing changes.

Inside `with single_backward():` (the training step), where the graph is back-propagated
once, dA reuses K's memory when the step's code writes its gradient through scratch (the
fused kernels): half the activation memory, and no second large buffer to fault in.
Without gradients nothing but the states and the step buffer is stored.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from study.engine.base import Cell

_LOCAL = threading.local()


@contextlib.contextmanager
def single_backward():
    """Promise that graphs recorded inside are back-propagated once (no retain_graph), so
    the backward pass may overwrite what the forward kept."""
    before = getattr(_LOCAL, "single", False)
    _LOCAL.single = True
    try:
        yield
    finally:
        _LOCAL.single = before


def recording_state_grads() -> bool:
    """Whether a `record_state_grads()` block is open (the error-flow probe): the layers
    then run the engine, whose backward records per step."""
    return getattr(_LOCAL, "recorder", None) is not None


class StateGradRecorder:
    """Per scan call (layers in forward order), the norms of the total gradients the
    backward pass carries: h[layer][t] = ‖dL/dh_t‖ and c[layer][t] = ‖dL/dc_t‖, one value
    per batch row (the error-flow probe of study.probes)."""

    def __init__(self):
        self.h: list[dict[int, Tensor]] = []
        self.c: list[dict[int, Tensor]] = []

    def slot(self) -> int:
        self.h.append({})
        self.c.append({})
        return len(self.h) - 1


@contextlib.contextmanager
def record_state_grads():
    """Record, in the backward passes of scans run inside, the gradient norms per step."""
    before = getattr(_LOCAL, "recorder", None)
    _LOCAL.recorder = rec = StateGradRecorder()
    try:
        yield rec
    finally:
        _LOCAL.recorder = before


class PreactClip:
    """Graves's clipping of the pre-activation gradients at θ, and how often it bit.

    `clamped` is the number of pre-activation gradient components (one per unit, block,
    batch row and step) that lay outside [−θ, θ] and were clamped, summed over the
    backward passes of every scan recorded under it, on either engine. θ = ∞ clips
    nothing: the scans record no clip at all (the backward is the unclipped one, to the
    last bit)."""

    def __init__(self, theta: float):
        theta = float(theta)
        if not theta > 0:  # NaN too
            raise ValueError(f"the pre-activation clipping threshold θ must be > 0, got {theta}")
        self.theta = theta
        self.active = math.isfinite(theta)
        self._counted = 0  # by the fused kernels
        self._pending: Tensor | None = None  # by the torch steps, summed without a sync

    def clamp_(self, d: Tensor) -> Tensor:
        """d ← clamp(d, −θ, θ) in place, counting the components that were outside. A
        component already clamped is not counted twice (|d| = θ is inside)."""
        n = torch.count_nonzero(d.abs() > self.theta)
        self._pending = n if self._pending is None else self._pending.add_(n)
        return d.clamp_(-self.theta, self.theta)

    def count(self, n: int) -> None:
        """Add n components clamped elsewhere (the C kernels count their own)."""
        self._counted += n

    def count_tensor(self, n: Tensor) -> None:
        """Add a count the GPU kernels left in a one-element tensor on their device, without
        a sync (read when `clamped` is)."""
        n = n.reshape(()).to(torch.int64)
        self._pending = n if self._pending is None else self._pending.add_(n)

    @property
    def clamped(self) -> int:
        if self._pending is not None:
            self._counted += int(self._pending)
            self._pending = None
        return self._counted


@contextlib.contextmanager
def clip_preactivations(theta: float):
    """Clip, in the backward passes of the scans run inside, the loss's derivative with
    respect to each pre-activation to [−θ, θ] at every step: Graves (2013, "Generating
    Sequences with RNNs") clipped the derivatives with respect to the LSTM layers' inputs
    before the sigmoid and tanh, inside backpropagation, not the parameter gradients.
    Yields the `PreactClip`, whose `clamped` counts the clamped components once the
    backward has run. A cell whose `backward` takes no `clip` cannot run inside it (its
    scan raises)."""
    before = getattr(_LOCAL, "clip", None)
    _LOCAL.clip = clip = PreactClip(theta)
    try:
        yield clip
    finally:
        _LOCAL.clip = before


_CLIPS: dict[type, bool] = {}  # step class -> its backward takes `clip`


def _takes_clip(step) -> bool:
    cls = type(step)
    if cls not in _CLIPS:
        _CLIPS[cls] = "clip" in inspect.signature(cls.backward).parameters
    return _CLIPS[cls]


def scan(cell: Cell, x: Tensor, W: Tensor, b: Tensor, R: Tensor, s0: Tensor,
         c0: Tensor | None, P: tuple[Tensor, ...] = (), *, onehot: bool = False,
         keep: bool = False, kernel=None, graphs: dict | None = None):
    """Run `cell` over x. Returns (S, C), or (S, C, K) with keep=True, K (T, B, saved)
    being what the cell kept per step (gate activations, for the probes). `kernel`, from
    study.engine.fused.kernel_for (C) or study.engine.triton_step (GPU), runs the cell's
    elementwise step. `graphs`, a dict the caller keeps per layer, lets a training step
    under single_backward() replay the loops as CUDA graphs (study.engine.graphs).

    Under autocast (train.precision: bf16) the scan runs in autocast's dtype: its inputs
    are cast on the way in and their gradients back to fp32 on the way out."""
    if c0 is None:
        c0 = W.new_empty(0)
    kind = W.device.type
    if torch.is_autocast_enabled(kind) and W.dtype == torch.float32:
        low = torch.get_autocast_dtype(kind)
        with torch.autocast(kind, enabled=False):
            return scan(cell, x if onehot or not x.is_floating_point() else x.to(low),
                        W.to(low), b.to(low), R.to(low), s0.to(low), c0.to(low),
                        tuple(p.to(low) for p in P), onehot=onehot, keep=keep, kernel=kernel,
                        graphs=graphs)
    step = kernel or cell
    tensors = (x, W, b, R, s0, c0, *P)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        graphs = graphs if _graphs_allowed(keep) else None
        S, C, K = _Scan.apply(cell, step, onehot, keep, graphs, *tensors)
    else:
        S, C, K = _forward(cell, step, onehot, x, W, b, R, s0, c0, P, keep_all=keep)
    return (S, C, K) if keep else (S, C)


def _graphs_allowed(keep: bool) -> bool:
    """Replaying captured loops is safe only in a training step back-propagated once, with
    nothing recording per-step values (see study.engine.graphs)."""
    clip = getattr(_LOCAL, "clip", None)
    return (getattr(_LOCAL, "single", False) and not keep and not recording_state_grads()
            and (clip is None or not clip.active))


def _project(onehot: bool, x: Tensor, W: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """out (T·B, G·H) = x W + b, in one matmul (or one row gather for one-hot input)."""
    if onehot:
        torch.index_select(W, 0, x.reshape(-1), out=out)
        return out.add_(b)
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), W, out=out)


def _forward(cell, step, onehot, x, W, b, R, s0, c0, P, keep_all):
    T, B = x.shape[0], x.shape[1]
    GH = cell.G * cell.H
    S = W.new_empty(T + 1, B, cell.state_size)
    S[0] = s0
    C = W.new_empty(T + 1, B, cell.H) if cell.has_cell_state else W.new_empty(0)
    if cell.has_cell_state:
        C[0] = c0
    Ss, Cs = S.unbind(0), (C.unbind(0) if cell.has_cell_state else (None,) * (T + 1))
    if not cell.split_recurrent:
        # K holds x W + b; each step adds s' R in place and the cell finishes it there.
        K = W.new_empty(T, B, GH)
        _project(onehot, x, W, b, K.view(T * B, GH))
        for t, k in enumerate(K.unbind(0)):
            k.addmm_(Ss[t], R)
            step.step(k, None, Ss[t], Cs[t], Ss[t + 1], Cs[t + 1], P)
        return S, C, K
    # cells that need s' R apart (GRU): keep x W + b apart too
    XA = W.new_empty(T, B, GH)
    _project(onehot, x, W, b, XA.view(T * B, GH))
    K = W.new_empty(T if keep_all else 1, B, cell.saved_size)
    Ks = K.unbind(0) if keep_all else K.unbind(0) * T
    ha = W.new_empty(B, GH)
    for t, xa in enumerate(XA.unbind(0)):
        torch.mm(Ss[t], R, out=ha)
        Ks[t][:, :GH].copy_(xa)
        step.step(Ks[t], ha, Ss[t], Cs[t], Ss[t + 1], Cs[t + 1], P)
    return S, C, K


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, step, onehot, keep, graphs, x, W, b, R, s0, c0, *P):
        # dA may reuse K's memory when the step writes its gradient through scratch and
        # nobody else holds K
        # (not with graphs: capturing the backward runs it, which would overwrite K)
        ctx.reuse_k = getattr(_LOCAL, "single", False) and not keep and graphs is None \
            and getattr(step, "inplace_grad", False) and not cell.split_recurrent
        ctx.graphs = graphs
        if graphs is not None:
            S, C, K = _graphed_forward(graphs, cell, step, onehot, x, W, b, R, s0, c0, P)
        else:
            S, C, K = _forward(cell, step, onehot, x, W, b, R, s0, c0, P, keep_all=True)
        ctx.cell, ctx.step, ctx.onehot = cell, step, onehot
        ctx.done = False
        ctx.recorder = getattr(_LOCAL, "recorder", None)
        clip = getattr(_LOCAL, "clip", None)
        ctx.clip = clip if clip is not None and clip.active else None
        if ctx.clip is not None and not _takes_clip(step):
            raise RuntimeError(f"{type(step).__name__}.backward takes no `clip`: this cell "
                               f"cannot clip its pre-activation gradients (Graves's "
                               f"clipping, study.engine.scan.clip_preactivations)")
        ctx.slot = ctx.recorder.slot() if ctx.recorder is not None else None
        ctx.save_for_backward(x, W, R, S, C, K, *P)
        ctx.set_materialize_grads(False)
        if not cell.has_cell_state:
            ctx.mark_non_differentiable(C)
        ctx.mark_non_differentiable(K)
        return S, C, K

    @staticmethod
    @once_differentiable
    def backward(ctx, dS, dC, _dK):
        cell: Cell = ctx.cell
        step = ctx.step
        if ctx.reuse_k and ctx.done:
            raise RuntimeError("this graph was recorded under study.engine.scan.single_backward(), "
                               "whose backward pass overwrites its buffers; it cannot run "
                               "twice (record it outside single_backward to retain it)")
        ctx.done = True
        x, W, R, S, C, K, *P = ctx.saved_tensors
        T, B, _ = K.shape
        GH = cell.G * cell.H
        if ctx.graphs is not None:
            dA, dHA, ds0, dc0 = _graphed_backward(ctx.graphs, cell, step, ctx.reuse_k, dS, dC,
                                                  R, S, C, K, P)
        else:
            dA, dHA, ds0, dc0 = _backward_loop(cell, step, ctx.reuse_k, dS, dC, R, S, C, K, P,
                                               ctx.clip, ctx.recorder, ctx.slot)
        need = ctx.needs_input_grad  # (cell, step, onehot, keep, graphs, x, W, b, R, s0, c0, *P)
        if ctx.graphs is not None:  # the graph's own memory: not handed out
            ds0 = ds0.clone() if need[9] else None
            dc0 = dc0.clone() if dc0 is not None and need[10] else None
        Hr = S.shape[-1]
        dA2 = dA.view(T * B, GH)
        dR = torch.mm(S[:-1].reshape(T * B, Hr).t(), dHA.view(T * B, GH)) if need[8] else None
        dP = cell.param_grads(dA, dHA, S, C, P)
        db = dA2.sum(0) if need[7] else None
        dx = dW = None
        if ctx.onehot:
            if need[6]:
                dW = torch.zeros_like(W).index_add_(0, x.reshape(-1), dA2)
        else:
            x2 = x.reshape(T * B, -1)
            dW = torch.mm(x2.t(), dA2) if need[6] else None
            dx = torch.mm(dA2, W.t()).view(x.shape) if need[5] else None
        return (None, None, None, None, None, dx, dW, db, dR, ds0, dc0, *dP)


def _backward_loop(cell, step, reuse_k, dS, dC, R, S, C, K, P, clip=None, recorder=None,
                   slot=None):
    """The backward time loop: per step the cell's derivative and ds_{t−1} += da_t Rᵀ.
    Returns (dA, dHA, ds0, dc0); dA (T, B, G·H) is K's memory when `reuse_k`."""
    T, B, _ = K.shape
    GH = cell.G * cell.H
    dA = K if reuse_k else K.new_empty(T, B, GH)
    dHA = K.new_empty(T, B, GH) if cell.split_recurrent else dA
    Rt = R.t()
    Ss, Ks, dAs, dHAs = S.unbind(0), K.unbind(0), dA.unbind(0), dHA.unbind(0)
    has_c = cell.has_cell_state
    Cs = C.unbind(0) if has_c else (None,) * (T + 1)
    dSs = dS.unbind(0) if dS is not None else None
    dCs = dC.unbind(0) if (has_c and dC is not None) else None
    ds_next = S.new_zeros(S.shape[1:])
    dc_next = C.new_zeros(C.shape[1:]) if has_c else None
    for t in range(T - 1, -1, -1):
        ds = ds_next if dSs is None else ds_next.add_(dSs[t + 1])
        dc = dc_next if dCs is None else (dc_next.add_(dCs[t + 1]) if has_c else None)
        dc_total = None
        if recorder is not None:
            recorder.h[slot][t] = ds[:, :cell.H].norm(dim=1)
            dc_total = torch.empty_like(dc) if has_c else None
        if clip is None:
            ds_direct, dc_next = step.backward(ds, dc, Ks[t], Ss[t], Cs[t], Ss[t + 1],
                                               Cs[t + 1], P, dAs[t], dHAs[t], dc_total)
        else:  # da_t (and dha_t) leave the step clipped to [−θ, θ]
            ds_direct, dc_next = step.backward(ds, dc, Ks[t], Ss[t], Cs[t], Ss[t + 1],
                                               Cs[t + 1], P, dAs[t], dHAs[t], dc_total,
                                               clip=clip)
        if dc_total is not None:
            recorder.c[slot][t] = dc_total.norm(dim=1)
        if cell.truncated_gradient:  # Hochreiter97: no error back through R
            ds_next = ds_direct if ds_direct is not None else torch.zeros_like(ds)
        elif ds_direct is not None:
            ds_next = torch.addmm(ds_direct, dHAs[t], Rt)
        else:
            ds_next = torch.mm(dHAs[t], Rt)
    ds0 = ds_next if dSs is None else ds_next.add_(dSs[0])
    dc0 = None
    if has_c:
        dc0 = dc_next if dCs is None else dc_next.add_(dCs[0])
    return dA, dHA, ds0, dc0


def _graphed_forward(graphs: dict, cell, step, onehot, x, W, b, R, s0, c0, P):
    """_forward replayed from a CUDA graph captured on the first call of this shape. The
    parameters are used in place (the optimizer updates them in place); x and the initial
    state are copied in. Returns fresh tensor objects over the graph's memory."""
    from study.engine import graphs as cuda_graphs

    inputs = (x, W, b, R, s0, c0, *P)
    key = ("forward", onehot, cuda_graphs.shape_key(*inputs))
    if key not in graphs:
        def loop(x, W, b, R, s0, c0, *P):
            return _forward(cell, step, onehot, x, W, b, R, s0, c0, tuple(P), keep_all=True)

        keep = [False, True, True, False, False, False] + [True] * len(P)
        graphs[key] = cuda_graphs.Graphed(loop, [t.detach() for t in inputs], keep=keep)
    S, C, K = graphs[key](*(t.detach() for t in inputs))
    return S.detach(), C.detach(), K.detach()


def _graphed_backward(graphs: dict, cell, step, reuse_k, dS, dC, R, S, C, K, P):
    """_backward_loop replayed from a CUDA graph; S, C, K are the forward graph's memory,
    used in place."""
    from study.engine import graphs as cuda_graphs

    inputs = (dS, dC, R, S, C, K, *P)
    key = ("backward", reuse_k, cuda_graphs.shape_key(*inputs))
    if key not in graphs:
        def loop(dS, dC, R, S, C, K, *P):
            return _backward_loop(cell, step, reuse_k, dS, dC, R, S, C, K, tuple(P))

        keep = [False, False, False, True, True, True] + [True] * len(P)
        graphs[key] = cuda_graphs.Graphed(loop, list(inputs), keep=keep)
    return graphs[key](*inputs)
