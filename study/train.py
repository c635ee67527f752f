"""Fitting one model: train(cfg, corpus, ...) -> Result. Model, data, optimizer, schedule,
clipping and checkpoints; nothing else. Each epoch is reported through a callback
(`on_epoch(EpochReport)`), which is where the caller logs, samples, probes or prunes
(study.runner does all four); train() itself knows no tracker.

Losses are mean cross-entropy in nats per character (bits = nats / ln 2). The training
loss of an epoch is the mean over its updates' new steps; validation and test losses are
over the whole split with the state carried across chunks, as in char-rnn.

Clipping (train.clip, threshold θ = train.clip_value), and what each epoch logs about it:
- `norm` (Pascanu13): the whole gradient g ← θ g / ‖g‖ when ‖g‖ > θ;
- `value` (char-rnn): each parameter-gradient component to [−θ, θ];
- `preact` (Graves13): inside back-propagation, dL/d(pre-activation) of every gate and cell
  input to [−θ, θ] at every time step (study.engine.scan.clip_preactivations).
An update is *clipped* when clipping changed its gradient (‖g‖ > θ; some component above θ;
some pre-activation derivative clamped). Each epoch records the fraction of its updates
that were clipped (`clip_rate`) and the quantiles of the global L2 norm of the parameter
gradient before any parameter clipping (`grad_norm_preclip_p50`, `_p99`, `_mean`, `_max`;
for `preact`, the norm after the clamping inside back-propagation, which is the gradient
the optimizer gets).

Guard rails (char-rnn, torch-rnn): a NaN/inf loss or a loss above `divergence_factor`
times the initial one stops the run with the reason. A checkpoint is written atomically
after every epoch (model, optimizer, RNG states, config, vocabulary, history), so a killed
run resumes where it was and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from study import data, files
from study.config import Config, to_dict
from study.engine.paths import allow_tf32, choose, say_why
from study.engine.scan import clip_preactivations, single_backward
from study.formats import bits
from study.model import CharLM, detach_state


class Diverged(RuntimeError):
    """Training stopped because the loss blew up; the message says how."""


@dataclass
class Result:
    status: str  # "finished" | "failed" (diverged)
    reason: str = ""
    epochs: int = 0
    best_epoch: int = 0
    best_val: float = math.nan  # nats/char
    test: float = math.nan  # nats/char, from the best checkpoint
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # training and the test evaluation
    num_params: int = 0
    model: CharLM | None = None  # the best-validation model, for callers that go on
    device: torch.device | None = None


@dataclass
class EpochReport:
    """What train() reports after each epoch, once its checkpoints are written."""

    epoch: int
    metrics: dict[str, float]  # this epoch's row of the history, without "epoch"
    model: CharLM  # the model as it is after this epoch
    device: torch.device
    first: bool  # the first epoch of this process (a resumed run's first is not epoch 1)


# ---------------------------------------------------------------------------------------
# set-up helpers


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use "
                           "'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: CharLM, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "rmsprop":  # char-rnn: decay 0.95, eps 1e-8
        return torch.optim.RMSprop(model.parameters(), lr=t.lr, alpha=t.rmsprop_alpha, eps=1e-8)
    if t.optimizer == "sgd":  # Pascanu13: plain SGD, where the gradient's size is the step's
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum)
    return torch.optim.Adam(model.parameters(), lr=t.lr)


def lr_at(cfg: Config, epoch: int) -> float:
    """Learning rate for epoch (1-based): char-rnn multiplies it by lr_decay at the end of
    every epoch from `lr_decay_after` on, so epoch e uses lr · decay^max(0, e − after)."""
    t = cfg.train
    return t.lr * t.lr_decay ** max(0, epoch - t.lr_decay_after)


# ---------------------------------------------------------------------------------------
# one update, one evaluation


def clip_gradients(model: CharLM, mode: str, value: float) -> tuple[float, bool]:
    """Clip the parameter gradients in place (modes norm and value); return their global L2
    norm before clipping and whether clipping changed them."""
    params = [p for p in model.parameters() if p.grad is not None]
    if mode == "norm":  # Pascanu13: g <- θ g / ‖g‖ when ‖g‖ > θ
        norm = float(torch.nn.utils.clip_grad_norm_(params, value))
        return norm, norm > value
    grads = [p.grad for p in params]
    norm = float(torch.nn.utils.get_total_norm(grads))
    if mode == "value":  # char-rnn: each component clipped to [−θ, θ]
        largest = float(torch.nn.utils.get_total_norm(grads, norm_type=math.inf))
        torch.nn.utils.clip_grad_value_(params, value)
        return norm, largest > value
    return norm, False


def train_step(model, opt, x, y, state, w: data.Window, cfg: Config):
    """One TBPTT update over window w of the (L, B) grids x, y. Returns (loss in nats/char
    of the new steps, grad norm before clipping, whether clipping changed the gradient, the
    carried state). With time_reduction "sum" the gradient is that of the loss summed over
    the k1 new steps (averaged over the batch), as char-rnn's."""
    t = cfg.train
    xs = x[w.start:w.end]
    preact = clip_preactivations(t.clip_value) if t.clip == "preact" else nullcontext()
    # back-propagated once, below: the engine may reuse buffers
    low = t.precision == "bf16"
    with single_backward(), preact as clamp, torch.autocast(xs.device.type, torch.bfloat16,
                                                            enabled=low):
        logits, _, carry = model(xs, state, carry_at=w.carry - w.start)
    new = logits[w.new - w.start:]  # (k1, B, V)
    loss = F.cross_entropy(new.reshape(-1, new.shape[-1]), y[w.new:w.end].reshape(-1))
    opt.zero_grad(set_to_none=True)
    (loss * (w.end - w.new) if t.time_reduction == "sum" else loss).backward()
    norm, clipped = clip_gradients(model, t.clip, t.clip_value)
    if clamp is not None:
        clipped = clamp.clamped > 0
    opt.step()
    return loss.item(), norm, clipped, carry


@torch.no_grad()
def evaluate(model: CharLM, ids: torch.Tensor, batch_size: int, seq_len: int,
             device: torch.device, split_name: str = "val") -> float:
    """Mean cross-entropy (nats/char) over a split, state carried across chunks."""
    was_training = model.training
    model.eval()
    x, y = data.streams(ids, batch_size, split_name)
    x, y = x.to(device), y.to(device)
    state, total = None, 0.0
    for start in range(0, x.shape[0], seq_len):
        logits, state, _ = model(x[start:start + seq_len], state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                 y[start:start + seq_len].reshape(-1), reduction="sum").item()
    model.train(was_training)
    return total / y.numel()


# ---------------------------------------------------------------------------------------
# checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


RESUME_FIX = "delete it to retrain this run from the start, or run without --resume"
LAST_KEYS = ("model", "optimizer", "rng", "config", "vocab", "epoch", "history", "best_val",
             "best_epoch", "initial_loss", "bad")
BEST_KEYS = ("model", "config", "vocab", "epoch")


def save_checkpoint(path: Path, **payload) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one.
    The payload is tensors and plain types only, so load_checkpoint can refuse the rest."""
    files.atomic_save(payload, path)


def rng_states() -> dict:
    """Every RNG the run draws from, as tensors and plain types (no pickled objects)."""
    kind, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            # numpy: ('MT19937', uint32[624], pos, has_gauss, cached_gaussian)
            "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
            "random": random.getstate(),  # (int, tuple of ints, float | None): plain
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(s: dict) -> None:
    n = s["numpy"]
    torch.set_rng_state(s["torch"])
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    random.setstate(s["random"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


SNAPSHOTS_DIR = "snapshots"  # train.keep_checkpoints=all: <ckpt_dir>/snapshots/update_N.pt


def snapshot_updates(updates_per_epoch: int, epochs: int) -> list[int]:
    """When train.keep_checkpoints=all keeps the weights, in updates done: at
    initialisation, after updates 1, 2, 4, 8, ... of the first epoch (where a model learns
    fastest) and after every epoch."""
    early = [2 ** k for k in range(max(0, updates_per_epoch - 1).bit_length())
             if 2 ** k < updates_per_epoch]
    return [0, *early, *(e * updates_per_epoch for e in range(1, epochs + 1))]


def save_snapshot(ckpt_dir: Path, update: int, epoch: float, model, cfg: Config,
                  corpus: data.Corpus) -> Path:
    """The weights after `update` updates (`epoch` epochs, fractional), loadable as a
    best.pt is."""
    path = Path(ckpt_dir) / SNAPSHOTS_DIR / f"update_{update:08d}.pt"
    save_checkpoint(path, model=model.state_dict(), config=to_dict(cfg), vocab=corpus.vocab,
                    epoch=float(epoch), update=update)
    return path


def load_checkpoint(path: Path, require: tuple[str, ...] = (), *, name: str | None = None,
                    fix: str = RESUME_FIX) -> dict:
    """A checkpoint's payload, read as tensors and plain types only (nothing in it runs).
    CheckpointError names the file (or `name`), what is wrong and `fix`."""
    label = name or str(path)
    try:
        ck = files.load_plain(path)
    except files.UnreadableFile as e:
        raise CheckpointError(f"{label} {e}; {fix}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {label}: {e.strerror}; {fix}") from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"{label} is not a checkpoint (it holds a "
                              f"{type(ck).__name__}, not a dict); {fix}")
    missing = [k for k in require if k not in ck]
    if missing:
        raise CheckpointError(f"{label} is not a checkpoint of this harness (it lacks "
                              f"{', '.join(missing)}); {fix}")
    return ck


# ---------------------------------------------------------------------------------------
# the loop


def train(cfg: Config, corpus: data.Corpus, ckpt_dir: Path | None = None,
          resume: bool = False, progress: bool = True,
          on_epoch: Callable[[EpochReport], None] | None = None) -> Result:
    """Train one model as `cfg` says and return the result, with the test loss of the best
    (lowest validation loss) checkpoint. on_epoch(report) is called after each epoch's
    checkpoints are written; it may raise to stop the run (a sweep's pruner does, and so
    do the tests' fault injections): the exception propagates."""
    t = cfg.train
    device, model, opt, x, y, schedule = _setup(cfg, corpus)
    chars_per_epoch = sum(w.end - w.new for w in schedule) * t.batch_size
    res = Result("running", num_params=model.num_params())
    start_epoch, initial_loss, bad_epochs = 1, None, 0
    last, best = (ckpt_dir / "last.pt", ckpt_dir / "best.pt") if ckpt_dir else (None, None)
    if resume and last is not None and last.is_file():
        start_epoch, initial_loss, bad_epochs = _restore(last, model, opt, res)

    t0 = time.perf_counter() - sum(h["epoch_seconds"] for h in res.history)
    stop_reason = ""
    snapshot = None  # train.keep_checkpoints=all: snapshot(updates done) saves the weights
    if t.keep_checkpoints == "all" and ckpt_dir is not None:
        def snapshot(update: int) -> None:
            save_snapshot(ckpt_dir, update, update / len(schedule), model, cfg, corpus)

        if start_epoch == 1:
            snapshot(0)  # the initial weights

    for epoch in range(start_epoch, t.epochs + 1):
        if bad_epochs >= (t.patience or math.inf):
            break
        lr = lr_at(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        e0 = time.perf_counter()
        bar = tqdm(total=chars_per_epoch, unit="char", unit_scale=True, leave=False,
                   desc=f"{cfg.model.cell}/{corpus.name} epoch {epoch}/{t.epochs}",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        try:
            losses, norms, clipped, initial_loss = _updates(
                model, opt, x, y, schedule, cfg, epoch, initial_loss, bar,
                snapshot if epoch == 1 else None)
        except Diverged as e:
            stop_reason = str(e)
            break
        finally:
            bar.close()
        train_seconds = time.perf_counter() - e0
        val = evaluate(model, corpus.splits["val"], t.batch_size, t.eval_seq_len, device)
        row = _row(epoch, losses, norms, clipped, val, lr, chars_per_epoch / train_seconds,
                   time.perf_counter() - e0)
        res.history.append(row)
        if val < res.best_val or math.isnan(res.best_val):
            res.best_val, res.best_epoch, bad_epochs = val, epoch, 0
            if best is not None:
                save_checkpoint(best, model=model.state_dict(), config=to_dict(cfg),
                                vocab=corpus.vocab, epoch=epoch, val_nats_per_char=val)
        else:
            bad_epochs += 1
        print(f"epoch {epoch:3d}  train {row['train_nats_per_char']:.4f}  val {val:.4f} "
              f"nats/char ({bits(val):.4f} bits/char)  {row['train_chars_per_s']:,.0f} "
              f"chars/s  {row['epoch_seconds']:.1f} s", file=sys.stderr)
        if last is not None:
            save_checkpoint(last, model=model.state_dict(), optimizer=opt.state_dict(),
                            rng=rng_states(), config=to_dict(cfg), vocab=corpus.vocab,
                            epoch=epoch, history=res.history, best_val=res.best_val,
                            best_epoch=res.best_epoch, initial_loss=initial_loss,
                            bad=bad_epochs)
        if snapshot is not None:
            snapshot(epoch * len(schedule))
        if on_epoch is not None:
            on_epoch(EpochReport(epoch, {k: v for k, v in row.items() if k != "epoch"},
                                 model, device, first=epoch == start_epoch))

    res.epochs, res.device = len(res.history), device
    res.seconds = time.perf_counter() - t0
    if stop_reason:
        res.status, res.reason = "failed", stop_reason
        return res
    if best is not None and best.is_file():
        model.load_state_dict(load_checkpoint(best, BEST_KEYS)["model"])
    res.test = evaluate(model, corpus.splits["test"], t.batch_size, t.eval_seq_len, device,
                        "test")
    res.status, res.model = "finished", model
    res.seconds = time.perf_counter() - t0
    return res


def _setup(cfg: Config, corpus: data.Corpus):
    """Device, the seeded model and its optimizer, the train split's (L, B) grids and the
    epoch's TBPTT windows."""
    t = cfg.train
    device = pick_device(t.device)
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    torch.set_flush_denormal(t.flush_denormal)
    seed_everything(t.seed)
    model = build_model(cfg, corpus.vocab_size, device)
    opt = make_optimizer(model, cfg)
    k2, k1 = t.seq_len, t.k1 or t.seq_len
    x, y = (g.to(device) for g in data.streams(corpus.splits["train"], t.batch_size, "train"))
    schedule = data.windows(x.shape[0], k1, k2)
    data.check_epoch_size(len(schedule))
    return device, model, opt, x, y, schedule


def build_model(cfg: Config, vocab_size: int, device: torch.device) -> CharLM:
    """The run's model on `device`, set up to train the way the run will: its training path
    (study.engine.paths: cuDNN, Triton, C kernels or the torch step; CUDA graphs) and, on
    CUDA, TF32 matmuls for fp32. Raises study.engine.paths.PathError when the config's
    engine or precision cannot train here."""
    t = cfg.train
    model = CharLM(vocab_size, cfg.model).to(device)
    path = choose(type(model.cell), cfg.model.engine, device.type, clip=t.clip,
                  truncated_gradient=cfg.model.truncated_gradient, cuda_graphs=t.cuda_graphs,
                  precision=t.precision)
    say_why(type(model.cell), path)
    for layer in model.layers:
        layer.path = path
    allow_tf32(device.type, t.precision)
    return model


def path_params(cfg: Config, model: CharLM, device: torch.device) -> dict[str, str]:
    """What trained a run, for its params (logged as train.*): `trained_with`, the
    training path (e.g. "cuDNN (nn.LSTM/nn.GRU kernels; probes on the engine)" or "engine
    (fused C kernels)"), and `precision_used` (e.g. "fp32 (TF32 matmuls)")."""
    if cfg.train.precision == "bf16":
        precision = "bf16 autocast (loss, weights and optimizer state fp32)"
    else:
        precision = "fp32 (TF32 matmuls)" if device.type == "cuda" else "fp32"
    return {"trained_with": model.layers[0].training_path(device).label(),
            "precision_used": precision}


def _restore(last: Path, model: CharLM, opt, res: Result) -> tuple[int, float, int]:
    """Model, optimizer, RNGs and history from last.pt; (first epoch to train, the initial
    loss, epochs without improvement)."""
    ck = load_checkpoint(last, LAST_KEYS)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    set_rng_states(ck["rng"])
    res.history, res.best_val, res.best_epoch = ck["history"], ck["best_val"], ck["best_epoch"]
    print(f"resuming from {last} after epoch {ck['epoch']}", file=sys.stderr)
    return ck["epoch"] + 1, ck["initial_loss"], ck["bad"]


def _updates(model, opt, x, y, schedule, cfg: Config, epoch: int, initial_loss, bar,
             snapshot=None):
    """One epoch's updates; (their losses, their pre-clip gradient norms, whether each was
    clipped, the run's initial loss). Raises Diverged on a non-finite loss or one above
    divergence_factor × the initial. snapshot(u), if given, is called after updates
    u = 1, 2, 4, ... that end before the epoch does."""
    t = cfg.train
    state, losses, norms, clipped = None, [], [], []
    for w in schedule:
        loss, norm, was_clipped, state = train_step(model, opt, x, y, state, w, cfg)
        initial_loss = initial_loss if initial_loss is not None else loss
        if not math.isfinite(loss):
            raise Diverged(f"loss became {loss} at epoch {epoch}")
        if loss > t.divergence_factor * initial_loss:
            raise Diverged(f"loss {loss:.3f} nats/char exceeds {t.divergence_factor:g}"
                           f" × the initial {initial_loss:.3f} at epoch {epoch}")
        state = detach_state(state)
        losses.append(loss)
        norms.append(norm)
        clipped.append(was_clipped)
        bar.update((w.end - w.new) * t.batch_size)
        u = len(losses)
        if snapshot is not None and u & (u - 1) == 0 and u < len(schedule):
            snapshot(u)
        if len(losses) % 10 == 0:
            bar.set_postfix_str(f"train {np.mean(losses[-10:]):.3f} nats/char")
    return losses, norms, clipped, initial_loss


def _row(epoch: int, losses, norms, clipped, val: float, lr: float, chars_per_s: float,
         seconds: float) -> dict:
    """One epoch's row of the history: losses in nats/char and bits/char, and the rest."""
    train_loss = float(np.mean(losses))
    return {"epoch": epoch, "train_nats_per_char": train_loss,
            "train_bits_per_char": bits(train_loss), "val_nats_per_char": val,
            "val_bits_per_char": bits(val), "lr": lr,
            "grad_norm_preclip_mean": float(np.mean(norms)),
            "grad_norm_preclip_max": float(np.max(norms)),
            "grad_norm_preclip_p50": float(np.quantile(norms, 0.5)),
            "grad_norm_preclip_p99": float(np.quantile(norms, 0.99)),
            "clip_rate": float(np.mean(clipped)), "updates": len(losses),
            "train_chars_per_s": chars_per_s, "epoch_seconds": seconds}
