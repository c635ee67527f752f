"""The cells' elementwise step in Triton: drop-in GPU twins of the C kernel objects of
study/engine/fused.py (`LSTMKernel`, `GRUKernel`, `RNNKernel`), with the same `step` and
`backward` signatures and semantics, so `study.engine.scan.scan(cell, ..., kernel=obj)`
runs on them unchanged. This module is the host side (`available`, the factory, the kernel
objects that launch the kernels); the device code, the `@triton.jit` helpers and kernels,
is study/engine/_triton_kernels.py, which describes what they compute.

    ok, why = available(device)        # triton importable, and CUDA or the interpreter
    kernel = triton_kernel_for(cell, dtype, device)   # ValueError: not covered
    S, C = scan(cell, x, W, b, R, s0, c0, P, kernel=kernel)

What a kernel computes is described once, by study/engine/fused.py, for the C and the
Triton kernels alike: `kernel_family(cls)` chooses the family ("lstm", "gru", "rnn"; a
class with its own `step` or `backward` gets no kernel), and for the LSTM family
`lstm_spec(cell)` gives the values of `SPEC_FIELDS`. The LSTM kernels take the spec's
fields as `tl.constexpr` parameters of the same names: `**spec` is passed as is, and the
factory checks that the kernels take every field, so every variant compiles to a kernel
specialised to its switches.

Each program owns one batch row and BLOCK_H consecutive units of it (grid: B × ⌈H /
BLOCK_H⌉); the kernel objects choose BLOCK_H (H rounded up to a power of two, at most
MAX_BLOCK_H) and pass the tensors' row strides, so they may be strided views. Tensors are
float32, bfloat16 or float64; the arithmetic (CT) is float64 for float64 tensors and
float32 otherwise.

Graves's clipping (`clip`, a study.engine.scan.PreactClip): θ travels as a one-element
tensor of the compute dtype (a Python float argument would be float32 in a compiled
kernel); each program writes how many components it clamped into its own slot of an int32
tensor, which torch sums and hands to `clip.count_tensor` (no atomics, no host sync).

triton is imported guarded: without it this module still imports and `available` says
why nothing can run. When triton imports, so does _triton_kernels, whose kernels triton
defines then as compiled or interpreted: TRITON_INTERPRET=1 (the interpreter, which runs
them on CPU tensors with numpy) must be set before the import.

Tests (tests/test_triton_step.py) run under the interpreter: every registered variant's
whole scan, forward (S, C, what the step keeps) and every input's gradient, in float64,
float32 and bfloat16 storage, against the torch step, with da written over `kept`
(single_backward); under clipping (the clamped count exactly); the error-flow recorder's
norms; lstm1997's truncated gradient; the activation helpers against
study.engine.activations; the factory's refusals and `available`.
"""

from __future__ import annotations

import inspect
import os

import torch

from study.engine import fused

DTYPES = (torch.float32, torch.bfloat16, torch.float64)
MAX_BLOCK_H = 256  # the default BLOCK_H: H rounded up to a power of two, at most this
INSTALL = "pip install triton==3.9.0"

try:  # guarded: without triton the module imports, and `available` says why it cannot run
    import triton
    import triton.language as tl
except Exception as e:  # not installed, or installed without a working backend
    triton = tl = None
    _IMPORT_ERROR: str | None = f"{type(e).__name__}: {e}"
    _INTERPRETED = False
else:
    _IMPORT_ERROR = None
    # the device code: defined (compiled or interpreted, as TRITON_INTERPRET says now)
    # when it is imported, here
    from study.engine import _triton_kernels
    from study.engine._triton_kernels import (
        _act_values,
        _gru_bwd,
        _gru_fwd,
        _lstm_bwd,
        _lstm_fwd,
        _rnn_bwd,
    )
    _INTERPRETED = _triton_kernels.INTERPRETED


def available(device) -> tuple[bool, str]:
    """Whether the Triton kernels can run on tensors of `device`, and why (not)."""
    if triton is None:
        return False, f"triton is not installed: {INSTALL} ({_IMPORT_ERROR})"
    device = torch.device(device)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if interpret and not _INTERPRETED:
        return False, ("TRITON_INTERPRET=1 was set after study.engine.triton_step was "
                       "imported, whose kernels are compiled; set it before the import")
    if interpret:
        return True, (f"triton {triton.__version__}'s interpreter (TRITON_INTERPRET=1) on "
                      f"{device.type} tensors")
    if device.type == "cuda":
        how = " (interpreted: TRITON_INTERPRET was 1 at import)" if _INTERPRETED else ""
        return True, f"triton {triton.__version__} on CUDA{how}"
    return False, f"no CUDA device (tensors on {device.type}) and TRITON_INTERPRET is not 1"


def triton_kernel_for(cell, dtype: torch.dtype, device, block_h: int | None = None):
    """The Triton kernel object for `cell` (step/backward as the cell's), for tensors of
    `dtype` on `device`. block_h: units per program, a power of two (default: H rounded
    up to a power of two, at most MAX_BLOCK_H). Raises ValueError when the kernels do not
    cover the cell or the dtype, RuntimeError when Triton cannot run on `device`."""
    cls = type(cell)
    family = fused.kernel_family(cls)
    if family is None:
        raise ValueError(f"{cls.__name__} has its own equations (it overrides its family's "
                         f"step or backward): no Triton kernel")
    if dtype not in DTYPES:
        raise ValueError(f"no Triton kernel for dtype {dtype}: float32, bfloat16 or float64")
    spec = None
    if family == "lstm":
        try:
            spec = fused.lstm_spec(cell)
        except ValueError as e:
            raise ValueError(f"{cls.__name__} {e}") from None
    if block_h is not None and (block_h < 1 or block_h & (block_h - 1)):
        raise ValueError(f"block_h must be a power of two, got {block_h}")
    ok, why = available(device)
    if not ok:
        raise RuntimeError(f"the Triton kernels cannot run: {why}")
    if family == "lstm":
        problem = _spec_problem(_lstm_fwd) or _spec_problem(_lstm_bwd)
        if problem:
            raise RuntimeError(f"{problem} of study.engine.fused.SPEC_FIELDS")
    return _CLASSES[family](cell, spec, block_h)


def activation_values(x: torch.Tensor, kind: str, m: float = 0.0):
    """(φ(x), dφ/da recovered from the kept value), by the kernels' own helpers, for a 1-D
    tensor x: `kind` one of fused.ACT ("sigmoid", "tanh", ...), m the scale of "scaled"."""
    ok, why = available(x.device)
    if not ok:
        raise RuntimeError(f"the Triton kernels cannot run: {why}")
    n = x.numel()
    y, d = torch.empty_like(x), torch.empty_like(x)
    block = 256
    _act_values[(triton.cdiv(n, block),)](x, y, d, n, KIND=fused.ACT[kind], M=float(m),
                                          CT=_compute_type(x.dtype), BLOCK=block)
    return y, d


def _compute_type(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _spec_problem(kernel) -> str | None:
    """The spec is passed as is (`**spec`): the kernel must take every SPEC_FIELDS name."""
    fields = {name for name, _, _ in fused.SPEC_FIELDS}
    params = set(inspect.signature(kernel.fn).parameters)
    missing = sorted(fields - params)
    return f"{kernel.fn.__name__} lacks the spec fields {missing}" if missing else None


# --------------------------------------------------------------------------------------
# the kernel objects: fused.LSTMKernel's, GRUKernel's and RNNKernel's interface


class _Kernel:
    def __init__(self, cell, spec, block_h):
        self.H = cell.H
        self.spec = spec
        self.block = block_h or min(triton.next_power_of_2(cell.H), MAX_BLOCK_H)
        self.warps = max(1, min(4, self.block // 64))
        self._thetas: dict = {}

    def _grid(self, rows: int) -> tuple[int, int]:
        return rows, triton.cdiv(self.H, self.block)

    def _clipping(self, clip, like: torch.Tensor, grid):
        """(θ tensor, count tensor) for the kernel; dummies when not clipping."""
        if clip is None:
            return like, like
        key = (clip.theta, like.dtype, like.device)
        if key not in self._thetas:
            ct = torch.float64 if like.dtype == torch.float64 else torch.float32
            self._thetas = {key: torch.full((1,), clip.theta, dtype=ct, device=like.device)}
        counts = torch.empty(grid[0] * grid[1], dtype=torch.int32, device=like.device)
        return self._thetas[key], counts

    def _consts(self, like: torch.Tensor) -> dict:
        return dict(CT=_compute_type(like.dtype), BLOCK=self.block, num_warps=self.warps)


class TritonLSTMKernel(_Kernel):
    """fused.LSTMKernel in Triton: the LSTM family, specialised by fused.lstm_spec."""

    inplace_grad = True  # the backward may write da over what the forward kept

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        peep = P[0] if P else a  # not read without peepholes
        _lstm_fwd[self._grid(a.shape[0])](
            a, a.stride(0), c_prev, c_prev.stride(0), c, c.stride(0), s, s.stride(0),
            peep, peep.stride(0), **self.spec, **self._consts(a))

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None,
                 clip=None):
        grid = self._grid(ds.shape[0])
        peep = P[0] if P else ds
        dct = dc_total if dc_total is not None else dc
        theta, counts = self._clipping(clip, da, grid)
        _lstm_bwd[grid](
            ds, ds.stride(0), dc, dc.stride(0), kept, kept.stride(0), c_prev,
            c_prev.stride(0), c, c.stride(0), peep, peep.stride(0), da, da.stride(0),
            dct, dct.stride(0), theta, counts, **self.spec, HAS_DCT=dc_total is not None,
            CLIP=clip is not None, **self._consts(da))
        if clip is not None:
            clip.count_tensor(counts.sum())
        return None, dc


class TritonGRUKernel(_Kernel):
    """fused.GRUKernel in Triton."""

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        _gru_fwd[self._grid(a.shape[0])](
            a, a.stride(0), ha, ha.stride(0), s_prev, s_prev.stride(0), s, s.stride(0),
            P[0], H=self.H, **self._consts(a))

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None,
                 clip=None):
        grid = self._grid(ds.shape[0])
        ds_prev = torch.empty_like(ds)
        theta, counts = self._clipping(clip, da, grid)
        _gru_bwd[grid](
            ds, ds.stride(0), kept, kept.stride(0), s_prev, s_prev.stride(0), da,
            da.stride(0), dha, dha.stride(0), ds_prev, ds_prev.stride(0), theta, counts,
            H=self.H, CLIP=clip is not None, **self._consts(da))
        if clip is not None:
            clip.count_tensor(counts.sum())
        return ds_prev, None


class TritonRNNKernel(_Kernel):
    """fused.RNNKernel in Triton (the forward is one torch operation already)."""

    inplace_grad = True  # da depends on ds and h only

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        torch.tanh(a, out=s)

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None,
                 clip=None):
        grid = self._grid(ds.shape[0])
        theta, counts = self._clipping(clip, da, grid)
        _rnn_bwd[grid](ds, ds.stride(0), s, s.stride(0), da, da.stride(0), theta,
                             counts, H=self.H, CLIP=clip is not None, **self._consts(da))
        if clip is not None:
            clip.count_tensor(counts.sum())
        return None, None


_CLASSES = {"lstm": TritonLSTMKernel, "gru": TritonGRUKernel, "rnn": TritonRNNKernel}
