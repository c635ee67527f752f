"""Error flow through time: the mean norm of dℓ_t/dh_(t−q) and dℓ_t/dc_(t−q) against the
distance q, at initialisation and after training: the quantity behind the vanishing-gradient
argument (Hochreiter 1991/97, Pascanu13).

Owns the measurement (`error_flow`) and the error-flow probe of a run (`error_flow_probe`:
error_flow.csv and error_flow.png, the curves against q, summarised by decay_metrics).
The module is named flow, not error_flow, so that study.probes.error_flow stays the function.
"""

from __future__ import annotations

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


DECAY_QS = (10, 50, 100)  # the distances whose decay is summarised as a metric


def decay_metrics(flow: pd.DataFrame) -> dict[str, float]:
    """The error flow's decay in a few numbers: for each curve (when, state, layer), the
    mean gradient norm at q over that at q = 0, for the q in DECAY_QS the curve reaches,
    as `errflow[_init].<state>.L<layer>.ratio_q<q>`. The whole curves are error_flow.csv."""
    out = {}
    for (when, state, layer), curve in flow.groupby(["when", "state", "layer"]):
        at = dict(zip(curve["q"], curve["grad_norm"], strict=True))
        base = at.get(0)
        name = f"{'errflow' if when == 'trained' else 'errflow_init'}.{state}.L{layer}"
        for q in DECAY_QS:
            if base and q in at:
                out[f"{name}.ratio_q{q}"] = at[q] / base
    return out
