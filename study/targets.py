"""The loss on a generated long-lag task's target characters (study.tasks), the measure of
whether a model learned the dependency.

A task's text is mostly noise and format; only its target characters need the information
`lag` characters back. `target_nats` scores a split as study.train.evaluate reads it
(study.longrange.per_char_nats: B streams, state carried across chunks) and averages the
loss over the target characters whose whole line the model has read: a target whose line
began before its stream did (the first line of every stream, and the split's first, cut
line) cannot be predicted from its markers by any model and is left out.

Success (the long-lag figure's criterion): a target loss below SUCCESS_FRACTION × the
task's chance loss (study.tasks.chance_nats: the best loss without the long-lag
information). A quarter of chance lies well below the plateau of a model that keeps only
the nearer of two markers (half of chance for temporal_order: ln 2 of ln 4), so success
means the far marker is used.
"""

from __future__ import annotations

import numpy as np
import torch

from study import tasks
from study.data import Corpus
from study.longrange import context_chars, per_char_nats

SUCCESS_FRACTION = 0.25


def scorable(text: str, task: str, batch_size: int) -> np.ndarray:
    """Mask of the target characters of `text` (a split, read in `batch_size` streams)
    whose line the model has read from its start."""
    n = len(text)
    mask = tasks.target_mask(task, text)
    if n == 0:
        return mask
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    newline = np.where(codes == ord("\n"), np.arange(n), -1)
    last = np.maximum.accumulate(newline)  # the last '\n' at or before each index
    before = np.concatenate([[-1], last[:-1]])  # ... strictly before it
    line_start = before + 1
    seen = context_chars(n, batch_size)  # characters read before predicting each one
    return mask & (before >= 0) & (np.arange(n) - line_start <= seen)


def target_nats(model, corpus: Corpus, split: str, batch_size: int, seq_len: int,
                device: torch.device) -> tuple[float, int]:
    """(mean loss in nats per target character, how many targets were scored) on `split`
    of a generated task's corpus."""
    if corpus.task is None:
        raise ValueError(f"corpus {corpus.name!r} is not a generated task; target losses "
                         f"exist for {', '.join(tasks.TASKS)}")
    ids = corpus.splits[split]
    nats = per_char_nats(model, ids, batch_size, seq_len, device)
    keep = scorable(corpus.decode(ids), corpus.task, batch_size) & np.isfinite(nats)
    if not keep.any():
        return float("nan"), 0
    return float(nats[keep].mean()), int(keep.sum())


def success_threshold(task: str) -> float:
    """The target loss (nats/char) below which a run counts as having learned the task."""
    return SUCCESS_FRACTION * tasks.chance_nats(task)
