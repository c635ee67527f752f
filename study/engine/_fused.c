/* Fused elementwise steps of the recurrence engine (see study/fused.py): one call per
 * time step instead of some twenty tensor operations. The matrix products stay in torch. */
#include <math.h>

typedef struct {
    int H;
    int oi, of, oo, oz; /* column offsets of the i, f, o, z blocks; -1 when absent */
    int pi, pf, po;     /* peephole rows for i, f, o; -1 when absent */
    int forget;         /* FORGET_GATE, FORGET_NONE (f = 1) or FORGET_COUPLED (f = 1 - i) */
    int sigma, g, k;    /* activation kinds of the gates, the cell input, the output */
    double gm, km;      /* the scale m of ACT_SCALED (m·σ(a) − m/2) for g and k */
    int fgr;            /* full gate recurrence: the state is [h, i, f, o] */
} Spec;

enum { ACT_SIGMOID = 0, ACT_TANH = 1, ACT_IDENTITY = 2, ACT_HARD = 3, ACT_BINARY = 4,
       ACT_SCALED = 5 };
enum { FORGET_GATE = 0, FORGET_NONE = 1, FORGET_COUPLED = 2 };

int study_fused_abi(void) { return 1; }

#define REAL float
#define SFX _f32
#define EXP expf
#define TANH tanhf
#define EXP_LIMIT 80.0f
#include "_fused_body.h"
#undef REAL
#undef SFX
#undef EXP
#undef TANH
#undef EXP_LIMIT

#define REAL double
#define SFX _f64
#define EXP exp
#define TANH tanh
#define EXP_LIMIT 700.0
#include "_fused_body.h"
