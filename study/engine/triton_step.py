"""The cells' elementwise step in Triton: drop-in GPU twins of the C kernel objects of
study/engine/fused.py (`LSTMKernel`, `GRUKernel`, `RNNKernel`), with the same `step` and
`backward` signatures and semantics, so `study.engine.scan.scan(cell, ..., kernel=obj)`
runs on them unchanged.

    ok, why = available(device)        # triton importable, and CUDA or the interpreter
    kernel = triton_kernel_for(cell, dtype, device)   # ValueError: not covered
    S, C = scan(cell, x, W, b, R, s0, c0, P, kernel=kernel)

What a kernel computes is described once, by study/engine/fused.py, for the C and the
Triton kernels alike: `kernel_family(cls)` chooses the family ("lstm", "gru", "rnn"; a
class with its own `step` or `backward` gets no kernel), and for the LSTM family
`lstm_spec(cell)` gives the values of `SPEC_FIELDS`. The LSTM kernels take the spec's
fields as `tl.constexpr` parameters of the same names (H, oi, of, oo, oz, pi, pf, po,
forget, sigma, g, k, gm, km, fgr: `**spec` is passed as is, and the factory checks that
the kernels take every field), so every variant compiles to a kernel specialised to its
switches: missing blocks, peepholes, forget kinds and activations are `if`s on
constexprs, resolved at compile time. The activation and forget kinds are fused.ACT's and
fused.FORGET's numbers. One helper, `_act(x, KIND, M)`, applies any activation, and one,
`_dact(d, kept, KIND, M)`, multiplies by its derivative recovered from the kept value;
the GRU and the RNN use them with the sigmoid and tanh kinds. The per-row algorithm is
`_fused_body.h`'s (lstm_fwd/lstm_bwd, gru_fwd/gru_bwd, rnn_bwd), including where Graves's
clipping clamps; products are grouped as in the torch steps of study/engine/lstm.py and
cells.py.

Each program owns one batch row and BLOCK_H consecutive units of it, in every block of
the row (grid: B × ⌈H / BLOCK_H⌉; the last block is masked). Row strides are passed in,
so the tensors may be strided views. Loads and stores use the tensors' dtype (float32,
bfloat16 or float64); the arithmetic is float64 for float64 tensors and float32 otherwise,
and bfloat16 is stored rounded to nearest even (written out, since the interpreter's own
cast truncates). tanh is computed here (Cephes' rational approximation below |x| = 0.625,
1 − 2e/(1 + e) with e = exp(−2|x|) above it), since triton.language has none. The
backward loads everything it needs from `kept` before it stores `da`, which may be the
same memory (`inplace_grad`).

Graves's clipping (`clip`, a study.engine.scan.PreactClip): θ travels as a one-element
tensor of the compute dtype (a Python float argument would be float32 in a compiled
kernel); each program writes how many components it clamped into its own slot of an int32
tensor, which torch sums and hands to `clip.count_tensor` (no atomics, no host sync).

triton is imported guarded: without it this module still imports and `available` says
why nothing can run. The kernels are defined at import when triton imports, and triton
decides then whether they are compiled or interpreted: TRITON_INTERPRET=1 (the
interpreter, which runs them on CPU tensors with numpy) must be set before the import.

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
    # triton.jit decides when a kernel is defined, i.e. when this module is imported,
    # whether it is compiled or interpreted (TRITON_INTERPRET=1)
    _INTERPRETED = bool(triton.knobs.runtime.interpret)


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
# the kernels, defined only when triton imports

if triton is not None:
    # fused.ACT's and fused.FORGET's numbers, as compile-time constants
    _SIGMOID, _TANH, _HARD, _BINARY, _SCALED = (
        tl.constexpr(fused.ACT[n]) for n in ("sigmoid", "tanh", "hard", "binary", "scaled"))
    _COUPLED = tl.constexpr(fused.FORGET["coupled"])

    @triton.jit
    def _ld(ptr, mask, CT: tl.constexpr):
        return tl.load(ptr, mask=mask, other=0.0).to(CT)

    @triton.jit
    def _st(ptr, value, mask):
        if ptr.dtype.element_ty == tl.bfloat16:
            # float32 → bfloat16 rounded to nearest even by hand, as the GPU's cvt.rn does:
            # the interpreter's cast truncates
            bits = value.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = bits + (0x7FFF + ((bits >> 16) & 1))
            out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            out = value.to(ptr.dtype.element_ty)
        tl.store(ptr, out, mask=mask)

    @triton.jit
    def _sigmoid(x):
        e = tl.exp(-tl.abs(x))  # ≤ 1: nothing overflows
        r = 1.0 / (1.0 + e)
        return tl.where(x >= 0, r, e * r)

    @triton.jit
    def _tanh(x):
        # |x| < 0.625: Cephes' x + x³·P(x²)/Q(x²); beyond: 1 − 2e/(1 + e), e = exp(−2|x|)
        ax = tl.abs(x)
        z = x * x
        p = ((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
             - 1.61468768441708447952e3)
        q = (((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
             + 4.84406305325125486048e3)
        small = x + x * z * (p / q)
        e = tl.exp(-2.0 * ax)
        big = 1.0 - 2.0 * e / (1.0 + e)
        return tl.where(ax < 0.625, small, tl.where(x < 0, -big, big))

    @triton.jit
    def _act(x, KIND: tl.constexpr, M: tl.constexpr):
        """y = φ(x) for activation kind KIND (fused.ACT); M: the scale of _SCALED."""
        if KIND == _SIGMOID:
            y = _sigmoid(x)
        elif KIND == _TANH:
            y = _tanh(x)
        elif KIND == _HARD:
            y = 0.2 * x + 0.5
            y = tl.where(y < 0.0, 0.0, tl.where(y > 1.0, 1.0, y))
        elif KIND == _BINARY:
            y = (x > 0).to(x.dtype)
        elif KIND == _SCALED:
            y = M * _sigmoid(x) - M / 2
        else:  # identity
            y = x
        return y

    @triton.jit
    def _keep(x, y, KIND: tl.constexpr):
        """What the backward keeps: y, but a binary gate keeps its pre-activation."""
        out = x if KIND == _BINARY else y
        return out

    @triton.jit
    def _val(kept, KIND: tl.constexpr):
        """φ's value from what was kept."""
        y = (kept > 0).to(kept.dtype) if KIND == _BINARY else kept
        return y

    @triton.jit
    def _dact(d, kept, KIND: tl.constexpr, M: tl.constexpr):
        """d ⊙ dφ/da, the derivative recovered from what was kept (identity: d)."""
        if KIND == _SIGMOID:
            out = d * (kept * (1.0 - kept))
        elif KIND == _TANH:
            out = d * (1.0 - kept * kept)
        elif KIND == _HARD:
            out = d * (((kept > 0.0) & (kept < 1.0)).to(kept.dtype) * 0.2)
        elif KIND == _BINARY:  # straight through: the hard sigmoid's slope 0.2·1[|a| < 2.5]
            out = d * ((tl.abs(kept) < 2.5).to(kept.dtype) * 0.2)
        elif KIND == _SCALED:  # m·σ − m/2: (m² − 4y²) / (4m)
            out = d * ((M * M - 4.0 * kept * kept) / (4.0 * M))
        else:
            out = d
        return out

    @triton.jit
    def _clip(d, th, mask):
        """(clamp(d, −θ, θ), how many components lay outside [−θ, θ])."""
        n = tl.sum((((d > th) | (d < -th)) & mask).to(tl.int32), axis=0)
        return tl.where(d > th, th, tl.where(d < -th, -th, d)), n

    @triton.jit
    def _count(count_ptr, n):
        """This program's count, into its own slot (summed by torch)."""
        slot = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        tl.store(count_ptr + slot, n)

    # ---------------------------------------------------------------------------------
    # LSTM family: the spec's fields are the constexpr parameters H .. fgr

    @triton.jit
    def _gate(a_ptr, p_ptr, PEEP: tl.constexpr, cell, m, sigma: tl.constexpr,
              CT: tl.constexpr):
        """A gate of the LSTM forward: its pre-activation (plus the peephole term p ⊙ cell
        when PEEP), activated; what the backward keeps is stored back over it."""
        a = _ld(a_ptr, m, CT)
        if PEEP:
            a = a + cell * _ld(p_ptr, m, CT)
        y = _act(a, sigma, 0.0)
        _st(a_ptr, _keep(a, y, sigma), m)
        return y

    @triton.jit
    def _lstm_fwd(a_ptr, lda, cp_ptr, ldcp, c_ptr, ldc, s_ptr, lds, peep_ptr, ldp,
                 H: tl.constexpr, oi: tl.constexpr, of: tl.constexpr, oo: tl.constexpr,
                 oz: tl.constexpr, pi: tl.constexpr, pf: tl.constexpr, po: tl.constexpr,
                 forget: tl.constexpr, sigma: tl.constexpr, g: tl.constexpr,
                 k: tl.constexpr, gm: tl.constexpr, km: tl.constexpr, fgr: tl.constexpr,
                 CT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = j < H
        a_row = a_ptr + row * lda
        cp = _ld(cp_ptr + row * ldcp + j, m, CT)
        # i and f peek at c'
        if oi >= 0:
            y_i = _gate(a_row + oi + j, peep_ptr + pi * ldp + j, pi >= 0, cp, m, sigma, CT)
        if of >= 0:
            y_f = _gate(a_row + of + j, peep_ptr + pf * ldp + j, pf >= 0, cp, m, sigma, CT)
        z = _act(_ld(a_row + oz + j, m, CT), g, gm)  # g is never binary: z is kept
        _st(a_row + oz + j, z, m)
        # c = f ⊙ c' + i ⊙ z
        if forget == _COUPLED:  # f = 1 − i
            c = (z - cp) * y_i + cp
        else:
            c = cp * y_f if of >= 0 else cp
            c = c + y_i * z if oi >= 0 else c + z
        _st(c_ptr + row * ldc + j, c, m)
        kc = _act(c, k, km)
        # h = o ⊙ k(c); o peeks at the new c
        if oo >= 0:
            y_o = _gate(a_row + oo + j, peep_ptr + po * ldp + j, po >= 0, c, m, sigma, CT)
            h = y_o * kc
        else:
            h = kc
        s_row = s_ptr + row * lds
        _st(s_row + j, h, m)
        if fgr:  # s = [h, i, f, o]
            _st(s_row + H + j, y_i, m)
            _st(s_row + 2 * H + j, y_f, m)
            _st(s_row + 3 * H + j, y_o, m)

    @triton.jit
    def _lstm_bwd(ds_ptr, lds, dc_ptr, lddc, kept_ptr, ldk, cp_ptr, ldcp, c_ptr, ldc,
                 peep_ptr, ldp, da_ptr, ldda, dct_ptr, lddct, theta_ptr, count_ptr,
                 H: tl.constexpr, oi: tl.constexpr, of: tl.constexpr, oo: tl.constexpr,
                 oz: tl.constexpr, pi: tl.constexpr, pf: tl.constexpr, po: tl.constexpr,
                 forget: tl.constexpr, sigma: tl.constexpr, g: tl.constexpr,
                 k: tl.constexpr, gm: tl.constexpr, km: tl.constexpr, fgr: tl.constexpr,
                 HAS_DCT: tl.constexpr, CLIP: tl.constexpr, CT: tl.constexpr,
                 BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = j < H
        ds_row = ds_ptr + row * lds
        k_row = kept_ptr + row * ldk
        # everything from `kept` first: da may be the same memory
        if oi >= 0:
            k_i = _ld(k_row + oi + j, m, CT)
        if of >= 0:
            k_f = _ld(k_row + of + j, m, CT)
        if oo >= 0:
            k_o = _ld(k_row + oo + j, m, CT)
        k_z = _ld(k_row + oz + j, m, CT)  # z itself: g is never binary
        dh = _ld(ds_row + j, m, CT)
        dc = _ld(dc_ptr + row * lddc + j, m, CT)  # dL/dc_t from step t+1
        cp = _ld(cp_ptr + row * ldcp + j, m, CT)
        kc = _act(_ld(c_ptr + row * ldc + j, m, CT), k, km)
        if CLIP:
            th = tl.load(theta_ptr).to(CT)
            n = 0
        # h = o ⊙ k(c)
        if oo >= 0:
            d_o = dh * kc
            if fgr:
                d_o = d_o + _ld(ds_row + 3 * H + j, m, CT)
            d_o = _dact(d_o, k_o, sigma, 0.0)
            if CLIP:  # before its peephole term joins dL/dc
                d_o, n_o = _clip(d_o, th, m)
                n = n + n_o
            dc = dc + _dact(dh * _val(k_o, sigma), kc, k, km)
            if po >= 0:
                dc = dc + d_o * _ld(peep_ptr + po * ldp + j, m, CT)
        else:
            dc = dc + _dact(dh, kc, k, km)
        if HAS_DCT:  # dL/dc_t by every path, for the error-flow probe
            _st(dct_ptr + row * lddct + j, dc, m)
        # c = f ⊙ c' + i ⊙ z
        if forget == _COUPLED:
            d_i = (k_z - cp) * dc
        else:
            if oi >= 0:
                d_i = dc * k_z
            if of >= 0:
                d_f = dc * cp
        if fgr:
            d_i = d_i + _ld(ds_row + H + j, m, CT)
            d_f = d_f + _ld(ds_row + 2 * H + j, m, CT)
        if oi >= 0:
            y_i = _val(k_i, sigma)
            d_i = _dact(d_i, k_i, sigma, 0.0)
            d_z = dc * y_i
        else:
            d_z = dc
        if of >= 0:
            y_f = _val(k_f, sigma)
            d_f = _dact(d_f, k_f, sigma, 0.0)
        d_z = _dact(d_z, k_z, g, gm)
        if CLIP:  # d_i, d_f, d_z, before their peephole terms reach dL/dc'
            if oi >= 0:
                d_i, n_i = _clip(d_i, th, m)
                n = n + n_i
            if of >= 0:
                d_f, n_f = _clip(d_f, th, m)
                n = n + n_f
            d_z, n_z = _clip(d_z, th, m)
            n = n + n_z
            _count(count_ptr, n)
        # what reaches c'
        if forget == _COUPLED:
            dcp = dc * (1.0 - y_i)
        elif of >= 0:
            dcp = dc * y_f
        else:
            dcp = dc
        if pi >= 0:
            dcp = dcp + d_i * _ld(peep_ptr + pi * ldp + j, m, CT)
        if pf >= 0:
            dcp = dcp + d_f * _ld(peep_ptr + pf * ldp + j, m, CT)
        _st(dc_ptr + row * lddc + j, dcp, m)
        da_row = da_ptr + row * ldda
        if oi >= 0:
            _st(da_row + oi + j, d_i, m)
        if of >= 0:
            _st(da_row + of + j, d_f, m)
        if oo >= 0:
            _st(da_row + oo + j, d_o, m)
        _st(da_row + oz + j, d_z, m)

    # ---------------------------------------------------------------------------------
    # GRU: kept [r, u, n, R_n h' + b_Rn]; ha = s'R

    @triton.jit
    def _gru_fwd(kept_ptr, ldk, ha_ptr, ldha, sp_ptr, ldsp, s_ptr, lds, brn_ptr,
                H: tl.constexpr, CT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = j < H
        k_row = kept_ptr + row * ldk
        ha_row = ha_ptr + row * ldha
        a_r = _ld(k_row + j, m, CT)
        a_u = _ld(k_row + H + j, m, CT)
        a_n = _ld(k_row + 2 * H + j, m, CT)
        sp = _ld(sp_ptr + row * ldsp + j, m, CT)
        r = _act(a_r + _ld(ha_row + j, m, CT), _SIGMOID, 0.0)
        u = _act(a_u + _ld(ha_row + H + j, m, CT), _SIGMOID, 0.0)
        hn = _ld(ha_row + 2 * H + j, m, CT) + _ld(brn_ptr + j, m, CT)
        n = _act(a_n + r * hn, _TANH, 0.0)
        _st(k_row + j, r, m)
        _st(k_row + H + j, u, m)
        _st(k_row + 2 * H + j, n, m)
        _st(k_row + 3 * H + j, hn, m)
        _st(s_ptr + row * lds + j, (sp - n) * u + n, m)  # (1 − u) ⊙ n + u ⊙ h'

    @triton.jit
    def _gru_bwd(ds_ptr, lds, kept_ptr, ldk, sp_ptr, ldsp, da_ptr, ldda, dha_ptr, lddha,
                dsp_ptr, lddsp, theta_ptr, count_ptr, H: tl.constexpr, CLIP: tl.constexpr,
                CT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = j < H
        k_row = kept_ptr + row * ldk
        r = _ld(k_row + j, m, CT)
        u = _ld(k_row + H + j, m, CT)
        n = _ld(k_row + 2 * H + j, m, CT)
        hn = _ld(k_row + 3 * H + j, m, CT)
        ds = _ld(ds_ptr + row * lds + j, m, CT)
        sp = _ld(sp_ptr + row * ldsp + j, m, CT)
        d_u = _dact((sp - n) * ds, u, _SIGMOID, 0.0)
        d_n = _dact(ds * (1.0 - u), n, _TANH, 0.0)
        if CLIP:  # d_n before d_r and dL/d(R_n h' + b_Rn) are formed from it
            th = tl.load(theta_ptr).to(CT)
            d_u, n_u = _clip(d_u, th, m)
            d_n, n_n = _clip(d_n, th, m)
        d_r = _dact(d_n * hn, r, _SIGMOID, 0.0)
        if CLIP:
            d_r, n_r = _clip(d_r, th, m)
            _count(count_ptr, n_u + n_n + n_r)
        da_row = da_ptr + row * ldda
        dha_row = dha_ptr + row * lddha
        _st(da_row + j, d_r, m)
        _st(da_row + H + j, d_u, m)
        _st(da_row + 2 * H + j, d_n, m)
        _st(dha_row + j, d_r, m)
        _st(dha_row + H + j, d_u, m)
        _st(dha_row + 2 * H + j, d_n * r, m)
        _st(dsp_ptr + row * lddsp + j, ds * u, m)

    # ---------------------------------------------------------------------------------
    # RNN: da = (1 − h²) ⊙ ds

    @triton.jit
    def _rnn_bwd(ds_ptr, lds, h_ptr, ldh, da_ptr, ldda, theta_ptr, count_ptr,
                H: tl.constexpr, CLIP: tl.constexpr, CT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = j < H
        h = _ld(h_ptr + row * ldh + j, m, CT)
        da = (1.0 - h * h) * _ld(ds_ptr + row * lds + j, m, CT)
        if CLIP:
            da, n = _clip(da, tl.load(theta_ptr).to(CT), m)
            _count(count_ptr, n)
        _st(da_ptr + row * ldda + j, da, m)

    @triton.jit
    def _act_values(x_ptr, y_ptr, d_ptr, N, KIND: tl.constexpr, M: tl.constexpr,
                    CT: tl.constexpr, BLOCK: tl.constexpr):
        j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = j < N
        x = _ld(x_ptr + j, m, CT)
        y = _act(x, KIND, M)
        kept = _keep(x, y, KIND)
        _st(y_ptr + j, y, m)
        _st(d_ptr + j, _dact(tl.full(x.shape, 1.0, CT), kept, KIND, M), m)


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
