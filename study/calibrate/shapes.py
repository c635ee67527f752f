"""The plan's training shapes: what decides the cost of an update and of an evaluation
(shape_key; FREE_MODEL and FREE_TRAIN are the keys that do not), the plan's runs grouped by
it (shapes_of), each Shape's costs (measured or extrapolated by study.calibrate.measuring)
and its FLOPs (forward_flops_per_char)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from study.config import Config
from study.data import Corpus, corpus_key

if TYPE_CHECKING:
    from study.ablation import RunSpec

# keys that do not change what an update or an evaluation costs
FREE_MODEL = ("init_range", "forget_bias")
FREE_TRAIN = ("lr", "momentum", "rmsprop_alpha", "lr_decay", "lr_decay_after", "epochs",
              "patience", "clip_value", "divergence_factor", "sample_chars",
              "keep_checkpoints", "seed", "time_reduction", "device")


@dataclass
class Shape:
    """One training shape of the plan and what it costs (measured or extrapolated)."""

    key: str
    cfg: Config  # the config of its first run
    vocab_size: int
    device: torch.device
    runs: int = 0
    measured: bool = False
    source: str = ""  # extrapolated: the label of the measured shape it was scaled from
    update_s: float = math.nan  # seconds per TBPTT update of k2 steps
    eval_char_s: float = math.nan  # seconds per character of evaluate()
    sample_fixed_s: float = math.nan  # the sample: its prime and set-up ...
    sample_char_s: float = math.nan  # ... and seconds per sampled character
    updates_timed: int = 0
    seconds: float = 0.0  # spent measuring it

    @property
    def label(self) -> str:
        m, t = self.cfg.model, self.cfg.train
        k1 = t.k1 or t.seq_len
        return (f"{m.cell} {m.num_layers}×{m.hidden_size}, V {self.vocab_size}, batch "
                f"{t.batch_size} × k2 {t.seq_len}" + (f" k1 {k1}" if k1 != t.seq_len else "")
                + f" on {self.device.type}")

    @property
    def flops_per_update(self) -> float:
        t = self.cfg.train
        return 3 * forward_flops_per_char(self.cfg.model, self.vocab_size) * t.seq_len * \
            t.batch_size

    @property
    def flops_per_eval_char(self) -> float:
        return forward_flops_per_char(self.cfg.model, self.vocab_size)


def forward_flops_per_char(m, vocab_size: int) -> float:
    """The forward GEMMs per character (a·x + s'·R per layer, the decoder); training is
    three times this. The first layer's one-hot input is a row lookup: no GEMM."""
    from study.engine.cells import get_cell_class

    H = m.hidden_size
    cell = get_cell_class(m.cell)(H)
    first_in = (m.embedding_size or H) if m.input == "embedding" else 0
    flops = 0.0
    for layer in range(m.num_layers):
        flops += 2.0 * cell.G * H * ((H if layer else first_in) + cell.state_size)
    return flops + 2.0 * H * vocab_size


def shape_key(cfg: Config, vocab_size: int, device: torch.device) -> str:
    """What decides the cost of an update and of an evaluation: runs with equal keys cost
    the same per update."""
    m = dataclasses.asdict(cfg.model)
    for k in FREE_MODEL:
        m.pop(k, None)
    m["dropout"] = m["dropout"] > 0
    m["embedding_size"] = (m["embedding_size"] or m["hidden_size"]) \
        if m["input"] == "embedding" else None
    t = dataclasses.asdict(cfg.train)
    for k in FREE_TRAIN:
        t.pop(k, None)
    t["k1"] = cfg.train.k1 or cfg.train.seq_len
    return json.dumps({"model": m, "train": t, "vocab": vocab_size, "device": str(device)},
                      sort_keys=True, default=str)


def run_device(cfg: Config, device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    from study.train import pick_device

    return pick_device(cfg.train.device)


def shapes_of(plan: list[RunSpec], corpora: dict[str, Corpus], device=None
              ) -> tuple[dict[str, Shape], list[str]]:
    """The plan's distinct shapes by key, and each run's key (in plan order)."""
    shapes: dict[str, Shape] = {}
    keys = []
    for spec in plan:
        V = corpora[corpus_key(spec.cfg.data)].vocab_size
        dev = run_device(spec.cfg, device)
        key = shape_key(spec.cfg, V, dev)
        shapes.setdefault(key, Shape(key, spec.cfg, V, dev)).runs += 1
        keys.append(key)
    return shapes, keys
