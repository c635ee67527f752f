"""Reading a stretch of text: what the probes need of a model, gathered in one pass.

Owns Activations (the text read, each unit's tanh(c) and h at every step, each gate unit's
fractions of saturated steps), `read` and `gate_label` (how a gate is named in the tables).
The text is read in B parallel streams with the state carried, and each stream's first
`warmup` steps are left out of the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from study.config import ProbesConfig
from study.model import CharLM


@dataclass
class Activations:
    text: str  # the stretch, in text order
    keep: np.ndarray  # (N,) bool: positions in the statistics (past each stream's warm-up)
    states: dict[tuple[int, str], np.ndarray]  # (layer, "c" | "h") -> (N, H) float16
    left: dict[tuple[int, str], np.ndarray]  # (layer, gate) -> (H,) fraction left-saturated
    right: dict[tuple[int, str], np.ndarray]


def gate_label(cell, name: str, gru_update: str) -> str:
    if name == "u" and gru_update == "charrnn":
        return "z (char-rnn: 1-u)"
    return name


@torch.no_grad()
def read(model: CharLM, ids: torch.Tensor, decode, cfg: ProbesConfig,
         chunk: int = 500) -> Activations:
    """Run the model over `ids` in cfg.streams streams and gather what the probes need.
    A stream shorter than the warm-up keeps its last step, so that any text but the empty
    one leaves something to score."""
    B = min(cfg.streams, max(1, len(ids) // (cfg.warmup + 10)))
    L = len(ids) // B
    warmup = max(0, min(cfg.warmup, L - 1))
    x = ids[:B * L].long().view(B, L).t().contiguous().to(next(model.parameters()).device)
    keep = np.zeros((B, L), bool)
    keep[:, warmup:] = True
    n_keep = keep[0].sum()
    states: dict[tuple[int, str], list] = {}
    left: dict[tuple[int, str], torch.Tensor] = {}
    right: dict[tuple[int, str], torch.Tensor] = {}
    was_training = model.training
    model.eval()
    state = None
    for start in range(0, L, chunk):
        inner, state = model.internals(x[start:start + chunk], state)
        lo = max(0, warmup - start)  # steps of this chunk past the warm-up
        for l in range(len(model.layers)):
            for kind, seq in (("c", inner.c[l]), ("h", inner.h[l])):
                if seq is not None:
                    vals = torch.tanh(seq) if kind == "c" else seq  # (T, B, H)
                    states.setdefault((l + 1, kind), []).append(
                        vals.permute(1, 0, 2).to(torch.float16).cpu().numpy())
            for name, g in inner.gates[l].items():
                if name == "u" and cfg.gru_update == "charrnn":
                    g = 1 - g
                key = (l + 1, gate_label(model.cell, name, cfg.gru_update))
                g = g[lo:]
                left[key] = left.get(key, 0) + (g < cfg.left).sum((0, 1)).double()
                right[key] = right.get(key, 0) + (g > cfg.right).sum((0, 1)).double()
    model.train(was_training)
    n = n_keep * B
    text = decode(ids[:B * L])
    return Activations(
        text=text, keep=keep.reshape(-1),
        states={k: np.concatenate(v, axis=1).reshape(B * L, -1) for k, v in states.items()},
        left={k: (v / n).cpu().numpy() for k, v in left.items()},
        right={k: (v / n).cpu().numpy() for k, v in right.items()})
