"""The recurrence engine: one time loop, forward and backward, for every cell.

Letters: T time, B batch, H hidden units, G pre-activation blocks, Hr recurrent width.

    S, C = scan(cell, xa, R, s0, c0, P)

xa (T, B, G·H) holds the input projections x W + b of all steps, computed by the caller
in one matmul. Per step the engine does one GEMM, a = xa_t + s_{t−1} R, and lets the cell
finish the step in place. It returns the whole state sequences S (T+1, B, Hr) and
C (T+1, B, H) (index 0 is the initial state; C is empty for cells without a cell state),
so a layer's output, its final state and the state at any step for truncated BPTT are
views of them.

The backward pass is written by hand: per step the cell's elementwise derivative and one
GEMM, ds_{t−1} += da_t Rᵀ; after the loop the recurrent weight gradient is one large GEMM,
dR = Σ_t s_{t−1}ᵀ da_t, and dL/dxa is returned whole so that autograd turns it into dW
with one more. Storage: S, C and what the cell keeps per step (`cell.saved_size` wide).
Without gradients nothing but the states is stored.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from study.cells import Cell


def scan(cell: Cell, xa: Tensor, R: Tensor, s0: Tensor, c0: Tensor | None,
         P: tuple[Tensor, ...] = (), keep: bool = False):
    """Run `cell` over xa. Returns (S, C), or (S, C, K) with keep=True, K (T, B, saved)
    being what the cell kept per step (gate activations, for the probes)."""
    if c0 is None:
        c0 = xa.new_empty(0)
    tensors = (xa, R, s0, c0, *P)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        S, C, K = _Scan.apply(cell, *tensors)
    else:
        S, C, K = _forward(cell, xa, R, s0, c0, P, keep_all=keep)
    return (S, C, K) if keep else (S, C)


def _forward(cell, xa, R, s0, c0, P, keep_all):
    T, B, GH = xa.shape
    S = xa.new_empty(T + 1, B, cell.state_size)
    S[0] = s0
    C = xa.new_empty(T + 1, B, cell.H) if cell.has_cell_state else xa.new_empty(0)
    if cell.has_cell_state:
        C[0] = c0
    K = xa.new_empty(T if keep_all else 1, B, cell.saved_size)
    Ks = K.unbind(0) if keep_all else K.unbind(0) * T
    Ss, xs = S.unbind(0), xa.unbind(0)
    Cs = C.unbind(0) if cell.has_cell_state else (None,) * (T + 1)
    split = cell.split_recurrent
    ha = xa.new_empty(B, GH) if split else None
    for t in range(T):
        k = Ks[t]
        if split:
            torch.mm(Ss[t], R, out=ha)
            k[:, :GH].copy_(xs[t])
        else:
            torch.addmm(xs[t], Ss[t], R, out=k)
        cell.step(k, ha, Ss[t], Cs[t], Ss[t + 1], Cs[t + 1], P)
    return S, C, K


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, xa, R, s0, c0, *P):
        S, C, K = _forward(cell, xa, R, s0, c0, P, keep_all=True)
        ctx.cell = cell
        ctx.save_for_backward(R, S, C, K, *P)
        ctx.set_materialize_grads(False)
        if not cell.has_cell_state:
            ctx.mark_non_differentiable(C)
        ctx.mark_non_differentiable(K)
        return S, C, K

    @staticmethod
    @once_differentiable
    def backward(ctx, dS, dC, _dK):
        cell: Cell = ctx.cell
        R, S, C, K, *P = ctx.saved_tensors
        T, B, _ = K.shape
        GH = cell.G * cell.H
        dA = K.new_empty(T, B, GH)
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
            ds_direct, dc_next = cell.backward(ds, dc, Ks[t], Ss[t], Cs[t], Ss[t + 1], Cs[t + 1],
                                               P, dAs[t], dHAs[t])
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
        Hr = S.shape[-1]
        dR = torch.mm(S[:-1].reshape(T * B, Hr).t(), dHA.reshape(T * B, GH))
        dP = cell.param_grads(dA, dHA, S, C, P)
        return (None, dA, dR, ds0, dc0, *dP)
