"""The device code of study/engine/triton_step.py: its `@triton.jit` helpers and kernels.
triton_step (the host side: `available`, the factory, the kernel objects that launch
these) imports this module only when triton imports; it imports triton unconditionally.

The LSTM kernels take the spec's fields (fused.SPEC_FIELDS) as `tl.constexpr` parameters
of the same names (H, oi, of, oo, oz, pi, pf, po, forget, sigma, g, k, gm, km, fgr), so
every variant compiles to a kernel specialised to its switches: missing blocks,
peepholes, forget kinds and activations are `if`s on constexprs, resolved at compile
time. The activation and forget kinds are fused.ACT's and fused.FORGET's numbers. One
helper, `_act(x, KIND, M)`, applies any activation, and one, `_dact(d, kept, KIND, M)`,
multiplies by its derivative recovered from the kept value; the GRU and the RNN use them
with the sigmoid and tanh kinds. The per-row algorithm is `_fused_body.h`'s
(lstm_fwd/lstm_bwd, gru_fwd/gru_bwd, rnn_bwd), including where Graves's clipping clamps;
products are grouped as in the torch steps of study/engine/lstm.py and cells.py.

Each program owns one batch row and BLOCK_H consecutive units of it, in every block of
the row (grid: B × ⌈H / BLOCK_H⌉; the last block is masked). Row strides are passed in,
so the tensors may be strided views. Loads and stores use the tensors' dtype (float32,
bfloat16 or float64); the arithmetic is float64 for float64 tensors and float32 otherwise
(CT), and bfloat16 is stored rounded to nearest even (written out, since the
interpreter's own cast truncates). tanh is computed here (Cephes' rational approximation
below |x| = 0.625, 1 − 2e/(1 + e) with e = exp(−2|x|) above it), since triton.language
has none. The backward loads everything it needs from `kept` before it stores `da`, which
may be the same memory (`inplace_grad`). Under clipping θ is read from a one-element
tensor of the compute dtype, and each program stores its clamped count into its own slot
(`_count`).

`@triton.jit` decides when a function is defined, i.e. when this module is imported,
whether it is compiled or interpreted (TRITON_INTERPRET=1): INTERPRETED records which.
The interpreter re-runs a kernel's source against its module's globals, without
closures, so every jit function here is module-level and refers only to other jit
functions and module-level constexprs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from study.engine import fused

# what triton.jit below decides: interpreted (TRITON_INTERPRET=1 at import) or compiled
INTERPRETED = bool(triton.knobs.runtime.interpret)

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
