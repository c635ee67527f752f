"""Error flow through time: the mean norm of dℓ_t/dh_(t−q) and dℓ_t/dc_(t−q) against the
distance q, at initialisation and after training: the quantity behind the vanishing-gradient
argument (Hochreiter 1991/97, Pascanu13).

Owns the measurement (`error_flow`) and the error-flow probe of a run (`error_flow_probe`:
error_flow.csv and error_flow.png, the curves against q, summarised by decay_metrics).
The module is named flow, not error_flow, so that study.probes.error_flow stays the function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from study.config import ProbesConfig
from study.engine.scan import record_state_grads
from study.model import CharLM


def error_flow(model: CharLM, ids: torch.Tensor, q_max: int, batch: int,
               warmup: int = 100) -> pd.DataFrame:
    """Mean over `batch` sequences of ‖dℓ_t/dh_(t−q)‖ and ‖dℓ_t/dc_(t−q)‖, q = 0..q_max, per
    layer: ℓ_t is the loss at the last step t of a window of q_max + 1 steps, entered with
    the state after `warmup` steps of text. A text too short for that gives the distances
    it has (q up to len(ids) − 2, with a shorter warm-up), none under two characters."""
    device = next(model.parameters()).device
    q_max = min(q_max, len(ids) - 2)
    if q_max < 0:
        return pd.DataFrame(columns=["layer", "state", "q", "grad_norm"])
    warmup = max(0, min(warmup, len(ids) - q_max - 2))
    span = warmup + q_max + 2
    starts = np.linspace(0, max(0, len(ids) - span - 1), batch).astype(int)
    seqs = torch.stack([ids[s:s + span].long() for s in starts], 1).to(device)  # (span, B)
    was_training = model.training
    model.eval()  # no dropout: the derivative of the model as it predicts
    state = None
    if warmup:
        with torch.no_grad():
            _, state, _ = model(seqs[:warmup])
    x, y = seqs[warmup:warmup + q_max + 1], seqs[warmup + q_max + 1]
    with torch.enable_grad(), record_state_grads() as rec:
        logits, _, _ = model(x, state)
        F.cross_entropy(logits[-1], y, reduction="sum").backward()  # ℓ per sequence
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    T = x.shape[0]
    rows = []
    for layer, (hs, cs) in enumerate(zip(rec.h, rec.c, strict=True), 1):
        for kind, rec_k in (("h", hs), ("c", cs)):
            for t, norms in rec_k.items():
                rows.append({"layer": layer, "state": kind, "q": T - 1 - t,
                             "grad_norm": float(norms.mean())})
    return pd.DataFrame(rows).sort_values(["layer", "state", "q"]).reset_index(drop=True)


def error_flow_probe(model: CharLM, init_model: CharLM | Callable[[], CharLM] | None,
                     ids: torch.Tensor, cfg: ProbesConfig, title: str, folder: Path
                     ) -> dict[str, float]:
    """The error flow of the trained model and (when given; a function that builds it is
    called here) of the initial one: error_flow.csv and error_flow.png in `folder`, and
    their decay_metrics returned."""
    from study.probes import figures

    if init_model is not None and not isinstance(init_model, torch.nn.Module):
        init_model = init_model()
    flow = error_flow(model, ids, cfg.error_flow_q, cfg.error_flow_batch)
    flow["when"] = "trained"
    if init_model is not None:
        f0 = error_flow(init_model, ids, cfg.error_flow_q, cfg.error_flow_batch)
        f0["when"] = "init"
        flow = pd.concat([f0, flow], ignore_index=True)
    flow.to_csv(folder / "error_flow.csv", index=False)
    if len(flow):
        fig = figures.error_flow_plot(flow, f"{title}: error flow")
        fig.savefig(folder / "error_flow.png", dpi=120)
        figures.plt.close(fig)
    return decay_metrics(flow)


Q1, Q2 = 1, 50  # the decay is measured between these distances back in time (steps)


def decay(curve: pd.DataFrame, q1: int = Q1, q2: int = Q2) -> tuple[float, int, str]:
    """(rate, q_to, why): the mean change of log ‖·‖ per step from q1 to q_to, the largest q
    measured up to q2 (a run whose probes stopped below q2: its last q); negative: the
    error vanishes. The rate is NaN, and `why` says why, where it cannot be computed."""
    c = curve.set_index("q").grad_norm.groupby(level=0).mean().sort_index() \
        if len(curve) else pd.Series(dtype=float)
    measured = [int(q) for q in c.index if q1 < q <= q2]
    if q1 not in c.index or not measured:
        top = int(c.index.max()) if len(c) else None
        return float("nan"), top if top is not None else q1, (
            "no q measured" if top is None else f"q measured only to {top}: needs q "
            f"{q1} and a later one")
    q_to = max(measured)
    a, b = float(c[q1]), float(c[q_to])
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        at = q1 if not (a > 0 and math.isfinite(a)) else q_to
        return float("nan"), q_to, (f"gradient {c[at]:.3g} at q = {at} (vanished below "
                                    "float precision, or not a number)")
    return math.log(b / a) / (q_to - q1), q_to, ""


def decay_metrics(flow: pd.DataFrame) -> dict[str, float]:
    """The error flow's decay as one number per curve (when, state, layer): `decay`'s rate
    from q = Q1 to Q2 (or the last q measured), as `errflow[_init].<state>.L<layer>.
    log_decay_per_step`: the report's decay table, logged. The whole curves are
    error_flow.csv."""
    out = {}
    for (when, state, layer), curve in flow.groupby(["when", "state", "layer"]):
        rate = decay(curve)[0]
        if math.isfinite(rate):
            name = f"{'errflow' if when == 'trained' else 'errflow_init'}.{state}.L{layer}"
            out[f"{name}.log_decay_per_step"] = rate
    return out
