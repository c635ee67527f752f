/* One time step of each cell family, forward and backward, for one element type.
 * Included twice by _fused.c with REAL = float / double and SFX = _f32 / _f64.
 * Every loop below runs over the H units of one batch row with no branch inside, so the
 * compiler vectorises it (exp/tanh come from glibc's vector math library). The equations
 * are those of study/engine/lstm.py (LSTMFamily) and study/engine/cells.py (GRU, RNN);
 * tests check the two agree. */

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

static inline REAL FN(clampexp)(REAL x) {
    /* keep exp finite: fast-math code may not rely on inf */
    return x < -EXP_LIMIT ? -EXP_LIMIT : (x > EXP_LIMIT ? EXP_LIMIT : x);
}

/* y = φ(a) in place where the kept value is y; for binary gates the kept value is a and
 * the returned pointer is `tmp`, which receives 1[a > 0]. */
static REAL *FN(act_fwd)(int kind, REAL m, REAL *restrict a, REAL *restrict tmp, int n) {
    switch (kind) {
    case ACT_SIGMOID:
        for (int j = 0; j < n; j++) a[j] = (REAL)1 / ((REAL)1 + EXP(-FN(clampexp)(a[j])));
        return a;
    case ACT_TANH:
        for (int j = 0; j < n; j++) a[j] = TANH(a[j]);
        return a;
    case ACT_HARD:
        for (int j = 0; j < n; j++) {
            REAL y = (REAL)0.2 * a[j] + (REAL)0.5;
            a[j] = y < 0 ? 0 : (y > 1 ? 1 : y);
        }
        return a;
    case ACT_BINARY:
        for (int j = 0; j < n; j++) tmp[j] = a[j] > 0 ? 1 : 0;
        return tmp;
    case ACT_SCALED:
        for (int j = 0; j < n; j++)
            a[j] = m / ((REAL)1 + EXP(-FN(clampexp)(a[j]))) - m / 2;
        return a;
    default: /* identity */
        return a;
    }
}

/* the value from what was kept */
static const REAL *FN(act_val)(int kind, const REAL *restrict kept, REAL *restrict tmp, int n) {
    if (kind != ACT_BINARY) return kept;
    for (int j = 0; j < n; j++) tmp[j] = kept[j] > 0 ? 1 : 0;
    return tmp;
}

/* d *= dφ/da, from what was kept */
static void FN(mul_grad)(int kind, REAL m, const REAL *restrict kept, REAL *restrict d, int n) {
    switch (kind) {
    case ACT_SIGMOID:
        for (int j = 0; j < n; j++) d[j] *= kept[j] * ((REAL)1 - kept[j]);
        break;
    case ACT_TANH:
        for (int j = 0; j < n; j++) d[j] *= (REAL)1 - kept[j] * kept[j];
        break;
    case ACT_HARD:
        for (int j = 0; j < n; j++) d[j] *= (kept[j] > 0 && kept[j] < 1) ? (REAL)0.2 : 0;
        break;
    case ACT_BINARY:
        for (int j = 0; j < n; j++)
            d[j] *= (kept[j] < (REAL)2.5 && kept[j] > (REAL)-2.5) ? (REAL)0.2 : 0;
        break;
    case ACT_SCALED:
        for (int j = 0; j < n; j++) d[j] *= (m * m - 4 * kept[j] * kept[j]) / (4 * m);
        break;
    default:
        break;
    }
}

/* Graves's clipping: d ← clamp(d, −θ, θ) over n components; returns how many lay outside
 * (a component already at ±θ is inside: clamping twice counts once). Called only when
 * clipping is on, so the unclipped loops are unchanged. */
static long FN(clip_count)(REAL *restrict d, int n, REAL th) {
    int k = 0;
    for (int j = 0; j < n; j++) {
        REAL v = d[j];
        k += (v > th) | (v < -th);
        d[j] = v > th ? th : (v < -th ? -th : v);
    }
    return k;
}

/* ---------------------------------------------------------------------------------- */
/* LSTM family. a: (B, lda) pre-activations in, kept values out; cp, c: (B, H);
 * s: (B, lds) with h in its first H columns (and i, f, o after it for FGR);
 * peep: (rows, H); scratch: 6H. */
void FN(lstm_fwd)(const Spec *sp, int B, REAL *a, int lda, const REAL *cp, REAL *c,
                  REAL *s, int lds, const REAL *peep, REAL *scratch) {
    const int H = sp->H;
    const REAL gm = (REAL)sp->gm, km = (REAL)sp->km;
    REAL *ti = scratch, *tf = scratch + H, *to = scratch + 2 * H, *kc = scratch + 3 * H;
    for (int b = 0; b < B; b++) {
        REAL *ar = a + (long)b * lda, *cr = c + (long)b * H, *h = s + (long)b * lds;
        const REAL *cpr = cp + (long)b * H;
        REAL *ai = sp->oi >= 0 ? ar + sp->oi : 0, *af = sp->of >= 0 ? ar + sp->of : 0;
        REAL *ao = sp->oo >= 0 ? ar + sp->oo : 0, *az = ar + sp->oz;
        if (ai && sp->pi >= 0) { /* i and f peek at c' */
            const REAL *p = peep + (long)sp->pi * H;
            for (int j = 0; j < H; j++) ai[j] += p[j] * cpr[j];
        }
        if (af && sp->pf >= 0) {
            const REAL *p = peep + (long)sp->pf * H;
            for (int j = 0; j < H; j++) af[j] += p[j] * cpr[j];
        }
        REAL *vi = ai ? FN(act_fwd)(sp->sigma, 0, ai, ti, H) : 0;
        REAL *vf = af ? FN(act_fwd)(sp->sigma, 0, af, tf, H) : 0;
        REAL *vz = FN(act_fwd)(sp->g, gm, az, 0, H);
        /* c = f ⊙ c' + i ⊙ z */
        if (sp->forget == FORGET_COUPLED) {
            for (int j = 0; j < H; j++) cr[j] = cpr[j] + vi[j] * (vz[j] - cpr[j]);
        } else if (vf && vi) {
            for (int j = 0; j < H; j++) cr[j] = vf[j] * cpr[j] + vi[j] * vz[j];
        } else if (vf) {
            for (int j = 0; j < H; j++) cr[j] = vf[j] * cpr[j] + vz[j];
        } else if (vi) {
            for (int j = 0; j < H; j++) cr[j] = cpr[j] + vi[j] * vz[j];
        } else {
            for (int j = 0; j < H; j++) cr[j] = cpr[j] + vz[j];
        }
        for (int j = 0; j < H; j++) kc[j] = cr[j];
        FN(act_fwd)(sp->k, km, kc, 0, H);
        REAL *vo = 0;
        if (ao) {
            if (sp->po >= 0) { /* the output gate peeks at the new c */
                const REAL *p = peep + (long)sp->po * H;
                for (int j = 0; j < H; j++) ao[j] += p[j] * cr[j];
            }
            vo = FN(act_fwd)(sp->sigma, 0, ao, to, H);
            for (int j = 0; j < H; j++) h[j] = vo[j] * kc[j];
        } else {
            for (int j = 0; j < H; j++) h[j] = kc[j];
        }
        if (sp->fgr) { /* s = [h, i, f, o] */
            for (int j = 0; j < H; j++) h[H + j] = vi[j];
            for (int j = 0; j < H; j++) h[2 * H + j] = vf[j];
            for (int j = 0; j < H; j++) h[3 * H + j] = vo[j];
        }
    }
}

/* ds: dL/ds_t, (B, lds). dc: (B, H), dL/dc_t in, dL/dc_{t-1} out. da: (B, ldd) out; it
 * may be the same memory as `kept`: each row is computed in scratch and copied out at its
 * end. dc_total, when not null, receives dL/dc_t by every path (B, H).
 * clip > 0: Graves's clipping at θ = clip (0: off). d_o is clamped to [−θ, θ] before its
 * peephole term joins dL/dc_t, d_i, d_f, d_z before theirs reach dL/dc_{t-1}; the row of
 * da leaves clamped. Returns the number of clamped components (0 when off).
 * scratch: 6H + width. */
long FN(lstm_bwd)(const Spec *sp, int B, const REAL *ds, int lds, REAL *dc,
                  const REAL *kept, int lda, const REAL *cp, const REAL *c,
                  const REAL *peep, REAL *da, int ldd, REAL *scratch, REAL *dc_total,
                  double clip) {
    const int H = sp->H;
    const int width = H * (1 + (sp->oi >= 0) + (sp->of >= 0) + (sp->oo >= 0));
    const int clipping = clip > 0;
    const REAL th = (REAL)clip;
    long clamped = 0;
    const REAL gm = (REAL)sp->gm, km = (REAL)sp->km;
    REAL *kc = scratch, *dct = scratch + H, *dsr = scratch + 2 * H;
    REAL *ti = scratch + 3 * H, *tf = scratch + 4 * H, *to = scratch + 5 * H;
    REAL *dr = scratch + 6 * H; /* this row of da, copied out at the end */
    for (int b = 0; b < B; b++) {
        const REAL *kr = kept + (long)b * lda, *cr = c + (long)b * H, *cpr = cp + (long)b * H;
        REAL *dcr = dc + (long)b * H;
        /* dL/dh_t, the sum of what the layer above and the next step sent */
        const REAL *ds_r = ds + (long)b * lds;
        REAL *dh = dsr;
        for (int j = 0; j < H; j++) dh[j] = ds_r[j];
        for (int j = 0; j < H; j++) kc[j] = cr[j];
        FN(act_fwd)(sp->k, km, kc, 0, H);
        for (int j = 0; j < H; j++) dct[j] = dcr[j];
        const REAL *ki = sp->oi >= 0 ? kr + sp->oi : 0, *kf = sp->of >= 0 ? kr + sp->of : 0;
        const REAL *ko = sp->oo >= 0 ? kr + sp->oo : 0, *kz = kr + sp->oz;
        REAL *d_i = sp->oi >= 0 ? dr + sp->oi : 0, *d_f = sp->of >= 0 ? dr + sp->of : 0;
        REAL *d_o = sp->oo >= 0 ? dr + sp->oo : 0, *d_z = dr + sp->oz;
        /* h = o ⊙ k(c): dL/dc gains dh ⊙ o ⊙ k'(c) */
        REAL *dk = to; /* k'(c) scaled by dh (and o) */
        for (int j = 0; j < H; j++) dk[j] = dh[j];
        if (ko) {
            const REAL *vo = FN(act_val)(sp->sigma, ko, ti, H);
            for (int j = 0; j < H; j++) d_o[j] = dh[j] * kc[j];
            if (sp->fgr) {
                for (int j = 0; j < H; j++) d_o[j] += ds_r[3 * H + j];
            }
            for (int j = 0; j < H; j++) dk[j] *= vo[j];
            FN(mul_grad)(sp->sigma, 0, ko, d_o, H);
            if (clipping) clamped += FN(clip_count)(d_o, H, th);
        }
        FN(mul_grad)(sp->k, km, kc, dk, H);
        for (int j = 0; j < H; j++) dct[j] += dk[j];
        if (ko && sp->po >= 0) {
            const REAL *p = peep + (long)sp->po * H;
            for (int j = 0; j < H; j++) dct[j] += d_o[j] * p[j];
        }
        if (dc_total) { /* dL/dc_t by every path, for the error-flow probe */
            REAL *o = dc_total + (long)b * H;
            for (int j = 0; j < H; j++) o[j] = dct[j];
        }
        /* c = f ⊙ c' + i ⊙ z */
        const REAL *vi = ki ? FN(act_val)(sp->sigma, ki, ti, H) : 0;
        const REAL *vf = kf ? FN(act_val)(sp->sigma, kf, tf, H) : 0;
        const REAL *vz = kz; /* g is never binary: the kept value is z */
        if (sp->forget == FORGET_COUPLED) {
            for (int j = 0; j < H; j++) d_i[j] = dct[j] * (vz[j] - cpr[j]);
        } else {
            if (d_i) for (int j = 0; j < H; j++) d_i[j] = dct[j] * vz[j];
            if (d_f) for (int j = 0; j < H; j++) d_f[j] = dct[j] * cpr[j];
        }
        if (sp->fgr) {
            for (int j = 0; j < H; j++) d_i[j] += ds_r[H + j];
            for (int j = 0; j < H; j++) d_f[j] += ds_r[2 * H + j];
        }
        if (d_i) FN(mul_grad)(sp->sigma, 0, ki, d_i, H);
        if (d_f) FN(mul_grad)(sp->sigma, 0, kf, d_f, H);
        if (vi) {
            for (int j = 0; j < H; j++) d_z[j] = dct[j] * vi[j];
        } else {
            for (int j = 0; j < H; j++) d_z[j] = dct[j];
        }
        FN(mul_grad)(sp->g, gm, kz, d_z, H);
        if (clipping) clamped += FN(clip_count)(dr, width, th); /* d_i, d_f, d_z */
        /* what reaches c' */
        if (sp->forget == FORGET_COUPLED) {
            for (int j = 0; j < H; j++) dcr[j] = dct[j] * ((REAL)1 - vi[j]);
        } else if (vf) {
            for (int j = 0; j < H; j++) dcr[j] = dct[j] * vf[j];
        } else {
            for (int j = 0; j < H; j++) dcr[j] = dct[j];
        }
        if (d_i && sp->pi >= 0) {
            const REAL *p = peep + (long)sp->pi * H;
            for (int j = 0; j < H; j++) dcr[j] += d_i[j] * p[j];
        }
        if (d_f && sp->pf >= 0) {
            const REAL *p = peep + (long)sp->pf * H;
            for (int j = 0; j < H; j++) dcr[j] += d_f[j] * p[j];
        }
        REAL *out = da + (long)b * ldd;
        for (int j = 0; j < ldd; j++) out[j] = dr[j];
    }
    return clamped;
}

/* ---------------------------------------------------------------------------------- */
/* GRU. kept: (B, 4H), xW + b for r u n in, [r, u, n, R_n h' + b_Rn] out; ha: (B, 3H). */
void FN(gru_fwd)(int B, int H, REAL *kept, const REAL *ha, const REAL *s_prev, REAL *s,
                 const REAL *b_rn) {
    for (int b = 0; b < B; b++) {
        REAL *k = kept + (long)b * 4 * H;
        const REAL *hr = ha + (long)b * 3 * H, *sp = s_prev + (long)b * H;
        REAL *so = s + (long)b * H;
        for (int j = 0; j < 2 * H; j++)
            k[j] = (REAL)1 / ((REAL)1 + EXP(-FN(clampexp)(k[j] + hr[j])));
        for (int j = 0; j < H; j++) k[3 * H + j] = hr[2 * H + j] + b_rn[j];
        for (int j = 0; j < H; j++) k[2 * H + j] = TANH(k[2 * H + j] + k[j] * k[3 * H + j]);
        for (int j = 0; j < H; j++) so[j] = k[2 * H + j] + k[H + j] * (sp[j] - k[2 * H + j]);
    }
}

/* ds: dL/ds_t, (B, H); da, dha: (B, 3H); ds_prev: (B, H) = ds ⊙ u.
 * clip > 0: Graves's clipping at θ = clip (0: off): dn, the derivative with respect to n's
 * whole argument, is clamped to [−θ, θ] before dr and dL/d(R_n h' + b_Rn) = dn ⊙ r are
 * formed from it, and dr, du are clamped. Returns the number of clamped components.
 * The products are grouped as written, the grouping these kernels have always used:
 * -ffast-math would regroup them by where each operand is defined, so reassociation is
 * off in this function (a change of signature must not change the last bits). */
__attribute__((optimize("no-associative-math")))
long FN(gru_bwd)(int B, int H, const REAL *ds, const REAL *kept, const REAL *s_prev,
                 REAL *da, REAL *dha, REAL *ds_prev, double clip) {
    const REAL th = (REAL)clip;
    long clamped = 0;
    for (int b = 0; b < B; b++) {
        const REAL *k = kept + (long)b * 4 * H, *sp = s_prev + (long)b * H;
        const REAL *dsr = ds + (long)b * H;
        REAL *d = da + (long)b * 3 * H, *dh = dha + (long)b * 3 * H;
        REAL *dp = ds_prev + (long)b * H;
        if (clip > 0) { /* the loop below, with the clamps: kept apart so that the
                         * unclipped loop stays as it was */
            int kb = 0;
            for (int j = 0; j < H; j++) {
                REAL g = dsr[j];
                REAL r = k[j], u = k[H + j], n = k[2 * H + j], hn = k[3 * H + j];
                REAL dn = (((REAL)1 - n * n) * ((REAL)1 - u)) * g;
                kb += (dn > th) | (dn < -th);
                dn = dn > th ? th : (dn < -th ? -th : dn);
                REAL dr = (((REAL)1 - r) * dn) * (r * hn);
                kb += (dr > th) | (dr < -th);
                dr = dr > th ? th : (dr < -th ? -th : dr);
                REAL du = ((sp[j] - n) * g) * (((REAL)1 - u) * u);
                kb += (du > th) | (du < -th);
                du = du > th ? th : (du < -th ? -th : du);
                d[j] = dr;
                d[H + j] = du;
                d[2 * H + j] = dn;
                dh[j] = dr;
                dh[H + j] = du;
                dh[2 * H + j] = dn * r;
                dp[j] = g * u;
            }
            clamped += kb;
            continue;
        }
        for (int j = 0; j < H; j++) {
            REAL g = dsr[j];
            REAL r = k[j], u = k[H + j], n = k[2 * H + j], hn = k[3 * H + j];
            REAL dn = (((REAL)1 - n * n) * ((REAL)1 - u)) * g;
            REAL dr = (((REAL)1 - r) * dn) * (r * hn);
            REAL du = ((sp[j] - n) * g) * (((REAL)1 - u) * u);
            d[j] = dr;
            d[H + j] = du;
            d[2 * H + j] = dn;
            dh[j] = dr;
            dh[H + j] = du;
            dh[2 * H + j] = dn * r;
            dp[j] = g * u;
        }
    }
    return clamped;
}

/* ---------------------------------------------------------------------------------- */
/* RNN: da = (1 − h²) ⊙ ds, then, when clip > 0, clamped to [−clip, clip] (Graves's
 * clipping); returns the number of clamped components. */
long FN(rnn_bwd)(int n, const REAL *ds, const REAL *h, REAL *da, double clip) {
    for (int j = 0; j < n; j++) da[j] = ((REAL)1 - h[j] * h[j]) * ds[j];
    return clip > 0 ? FN(clip_count)(da, n, (REAL)clip) : 0;
}

#undef FN
