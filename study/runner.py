"""One run's whole life in MLflow: `run_one`, used by every ablation run and every sweep trial.

    outcome = run_one(cfg, corpus, store, RunLabels(name, tags, parent_id), ckpt_dir, ...)

It opens the run (or takes up an interrupted one of the same configuration, with
`--resume`), logs the config, trains through study.train (which only fits), and on each
epoch logs the metrics, a sample and the every-N-epochs probes before handing the epoch
to the caller's own callback (a sweep's pruner). After training it logs the test loss,
runs the probes and logs their metrics, tags and files, logs the checkpoint, and
ends the run with its final status and reason. On a generated long-lag task (study.tasks)
it also logs, per epoch and at the end, the loss on the target characters alone
(`loss/val_target_nats_per_char`, test likewise; study.targets) and tags whether the run
learned the dependency (`task.learned`, by study.targets' stated threshold).

Final statuses:

    finished         FINISHED
    failed           FAILED, "loss became nan at epoch 3" (diverged)
    probes failed    FAILED, "probes failed after training (units: ...)"; --resume probes
                     again without retraining
    pruned           KILLED, "pruned after epoch 2: ..." (the callback raised Pruned)
    interrupted      KILLED, "interrupted; continue with --resume" (Ctrl-C, SIGTERM); the
                     exception goes on to the caller
    error            FAILED, "ExcType: message"; the exception goes on to the caller

With tracking off (store None) the same happens without a run.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from study import tasks
from study import train as training
from study.config import Config
from study.data import Corpus
from study.formats import bits
from study.model import CharLM, sample
from study.probes import ProbeResult, run_probes
from study.targets import success_threshold, target_nats

RESUME_HINT = "continue with --resume"


class Pruned(Exception):  # noqa: N818 - a decision, not an error
    """Raised by an epoch callback to stop a run early on purpose (a sweep's pruner)."""


@dataclass
class RunLabels:
    """How a new run is named and tagged; `tags` must hold `config_hash`."""

    name: str
    tags: dict
    parent_id: str | None = None


@dataclass
class Outcome:
    status: str  # "finished" | "failed" | "probes failed" | "pruned"
    reason: str
    run_id: str  # "" with tracking off
    result: training.Result | None = None
    probes: ProbeResult | None = None

    @property
    def ok(self) -> bool:
        return self.status == "finished"


class _NoRun:
    """Tracking off: a run's calls, without effect."""

    run_id = ""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def run_one(cfg: Config, corpus: Corpus, store, labels: RunLabels, ckpt_dir: Path, *,
            resume: bool = False, take_up: bool = True, progress: bool = True,
            log_checkpoint: bool = True, resume_hint: str = RESUME_HINT,
            on_epoch: Callable[[training.EpochReport], None] | None = None,
            on_run: Callable[[str], None] | None = None) -> Outcome:
    """Train `cfg` on `corpus` as one MLflow run of `store` (None: tracking off) and return
    how it ended. take_up: an unfinished run with the same config_hash is this run
    interrupted earlier (continued with `resume`, else marked KILLED and started anew).
    on_run(run_id) is called once the run exists (to record it in a queue)."""
    run, resuming = _open(store, cfg, corpus, labels, ckpt_dir, resume, take_up)
    if on_run is not None and run.run_id:
        on_run(run.run_id)
    if not resuming:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    t0 = time.perf_counter()
    failed_probes: dict[str, str] = {}
    title = f"{cfg.model.cell} on {corpus.name}"

    def each_epoch(rep: training.EpochReport) -> None:
        if rep.first:
            run.set_tags(_run_tags(rep.model, rep.device))
            run.log_params({f"train.{k}": v for k, v in
                            training.path_params(cfg, rep.model, rep.device).items()})
        metrics = dict(rep.metrics)
        if not _lr_varies(cfg):  # a constant is a param (train.lr), not a chart
            metrics.pop("lr", None)
        if corpus.task is not None:  # whether the long-lag dependency is being learned
            metrics["val_target_nats_per_char"] = target_nats(
                rep.model, corpus, "val", cfg.train.batch_size, cfg.train.eval_seq_len,
                rep.device)[0]
            metrics["val_target_bits_per_char"] = bits(metrics["val_target_nats_per_char"])
        run.log_metrics(metrics, step=rep.epoch)
        if cfg.train.sample_chars:
            run.log_text(sample_text(rep.model, corpus, cfg.train.sample_chars,
                                     cfg.train.seed + rep.epoch),
                         f"samples/epoch_{rep.epoch:03d}.txt")
        p = cfg.probes
        if p.enabled and p.every and rep.epoch % p.every == 0:
            pr = run_probes(rep.model, corpus, p, None, title, full=False)
            run.log_metrics(pr.metrics, step=rep.epoch)
            failed_probes.update({f"{k} (epoch {rep.epoch})": v for k, v in pr.failed.items()})
        if on_epoch is not None:
            on_epoch(rep)

    run.watch_system(cfg.tracking.system_metrics_s)  # until the run ends
    try:
        res = training.train(cfg, corpus, ckpt_dir, resume=resuming, progress=progress,
                             on_epoch=each_epoch)
        if res.status != "finished":
            run.end("FAILED", res.reason)
            return Outcome("failed", res.reason, run.run_id, res)
        run.log_metrics({"test_nats_per_char": res.test, "test_bits_per_char": bits(res.test),
                         "best_val_nats_per_char": res.best_val, "best_epoch": res.best_epoch,
                         "epochs_trained": res.epochs})
        if corpus.task is not None:
            _log_targets(run, res, cfg, corpus)
        probes = _final_probes(run, res, cfg, corpus, title) if cfg.probes.enabled else None
        if cfg.probes.enabled and cfg.probes.errors:
            failed_probes.update(_final_errors(run, res, cfg, corpus, title, progress,
                                               ckpt_dir))
        res.seconds = time.perf_counter() - t0  # the whole run: training, test and probes
        run.log_metrics({"run_seconds": res.seconds})
        run.set_tags(_run_tags(res.model, res.device))
        failed_probes.update(probes.failed if probes is not None else {})
        if log_checkpoint and (ckpt_dir / "best.pt").is_file():
            run.log_artifact(ckpt_dir / "best.pt", "checkpoint")
            snaps = ckpt_dir / training.SNAPSHOTS_DIR
            if cfg.train.keep_checkpoints == "all" and snaps.is_dir():
                run.log_artifacts(snaps, "checkpoint/snapshots")
            run.log_model(res.model, corpus.vocab_size,
                          f"{title}: the best epoch's weights ({res.best_epoch}), val "
                          f"{res.best_val:.4f} nats/char")
    except Pruned as e:
        run.end("KILLED", str(e))
        return Outcome("pruned", str(e), run.run_id)
    except BaseException as e:
        run.end_after(e, resume_hint)
        raise
    if failed_probes:
        reason = ("probes failed after training (" + "; ".join(
            f"{k}: {v}" for k, v in failed_probes.items()) + f"); fix, then {resume_hint}"
            " to probe again without retraining")
        run.end("FAILED", reason)
        return Outcome("probes failed", reason, run.run_id, res, probes)
    run.end("FINISHED")
    return Outcome("finished", "", run.run_id, res, probes)


def _log_targets(run, res: training.Result, cfg: Config, corpus: Corpus) -> None:
    """A generated task's target loss on val and test (the best checkpoint), its chance
    loss and the success threshold (study.targets)."""
    t = cfg.train
    out = {}
    for split, name in (("val", "best_val"), ("test", "test")):
        nats, count = target_nats(res.model, corpus, split, t.batch_size, t.eval_seq_len,
                                  res.device)
        out[f"{name}_target_nats_per_char"] = nats
        out[f"{name}_target_bits_per_char"] = bits(nats)
        out[f"{split}_targets"] = count
    run.log_metrics(out)
    run.set_tags({"task": corpus.task, "task.lag": corpus.lag,
                  "task.chance_nats_per_char": f"{tasks.chance_nats(corpus.task):.4f}",
                  "task.success_below_nats_per_char":
                      f"{success_threshold(corpus.task):.4f}",
                  "task.learned": str(out["test_target_nats_per_char"]
                                      < success_threshold(corpus.task)).lower()})


def _open(store, cfg: Config, corpus: Corpus, labels: RunLabels, ckpt_dir: Path,
          resume: bool, take_up: bool):
    """The run to log to, and whether training resumes from a checkpoint."""
    has_ckpt = (ckpt_dir / "last.pt").is_file()
    if store is None:
        return _NoRun(), resume and has_ckpt
    prior = store.unfinished(labels.tags["config_hash"]) if take_up else None
    if prior is not None and resume:
        return store.resume(prior), has_ckpt
    if prior is not None:
        print(f"  an interrupted run of this configuration exists ({prior}); starting anew "
              "(use --resume to continue it)", file=sys.stderr)
        store.mark_killed(prior, "interrupted; superseded by a new run started without "
                                 "--resume")
    run = store.start(labels.name, {**labels.tags, "data_sha256": corpus.sha256},
                      parent_id=labels.parent_id,
                      description=describe_run(cfg, corpus))
    # a training run's params: the sections that shape it (not the grid or sweep around it)
    run.log_config(cfg, sections=("data", "model", "train", "probes"))
    run.log_dataset(corpus.name, corpus.sha256, str(corpus.path), {
        "chars": int(corpus.ids.numel()), "vocab_size": corpus.vocab_size,
        **{f"{k}_chars": int(v.numel()) for k, v in corpus.splits.items()}})
    return run, False


def describe_run(cfg: Config, corpus: Corpus) -> str:
    """One line on what a training run is, for its note in the MLflow UI."""
    m, t = cfg.model, cfg.train
    k1 = f" k1 {t.k1}" if t.k1 not in (None, t.seq_len) else ""
    clip = t.clip if t.clip == "none" else f"{t.clip} {t.clip_value:g}"
    task = f" {tasks.describe(corpus.task, corpus.lag)}" if corpus.task else ""
    return (f"{m.cell} on {corpus.name} ({corpus.ids.numel():,} chars, {corpus.vocab_size} "
            f"symbols), seed {t.seed}: {m.num_layers}×{m.hidden_size} units, {t.optimizer} "
            f"lr {t.lr:g}, batch {t.batch_size}, TBPTT k2 {t.seq_len}{k1}, clip {clip}, up "
            f"to {t.epochs} epochs. Losses in nats/char and bits/char (loss/…), per split."
            + task)


def _lr_varies(cfg: Config) -> bool:
    return training.lr_at(cfg, 1) != training.lr_at(cfg, cfg.train.epochs)


def _run_tags(model: CharLM, device) -> dict:
    return {"device": str(device), "threads": str(torch.get_num_threads()),
            "num_params": str(model.num_params())}


def _final_probes(run, res: training.Result, cfg: Config, corpus: Corpus,
                  title: str) -> ProbeResult:
    """The probes of a trained run, logged to it; the error flow at initialisation uses
    the same initial weights, rebuilt from the seed."""

    def initial_model() -> CharLM:
        training.seed_everything(cfg.train.seed)
        return CharLM(corpus.vocab_size, cfg.model).to(res.device)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probes"
        out.mkdir()
        pr = run_probes(res.model, corpus, cfg.probes, out, title,
                        init_model=initial_model if cfg.probes.error_flow else None)
        log_probes(run, pr, out)
    return pr


def _final_errors(run, res: training.Result, cfg: Config, corpus: Corpus, title: str,
                  progress: bool, ckpt_dir: Path) -> dict[str, str]:
    """Karpathy15's error analysis of a trained run (study.errors; with
    train.keep_checkpoints=all also its training dynamics), logged to it; a failure is
    returned as {"errors": reason} (the run then ends FAILED, as for a probe)."""
    from study import errors

    kept = ckpt_dir / training.SNAPSHOTS_DIR
    snapshots = errors.snapshot_models(kept, cfg, corpus.vocab_size, res.device) \
        if cfg.train.keep_checkpoints == "all" and kept.is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "errors"
        try:
            result = errors.analyse(res.model, corpus, cfg, out, title, res.device, progress,
                                    snapshots)
        except Exception as e:  # noqa: BLE001 (the run ends FAILED with the reason)
            print("probes: the errors analysis failed:", file=sys.stderr)
            traceback.print_exc()
            return {"errors": f"{type(e).__name__}: {e}"}
        errors.log_errors(run, result, out)
    return {}


def log_probes(run, pr: ProbeResult, out: Path | None) -> None:
    """A full probe result onto its run: files, metrics and tags."""
    if out is not None and any(out.iterdir()):
        run.log_artifacts(out, "probes")
    if pr.metrics:
        run.log_metrics(pr.metrics)
    if pr.tags:
        run.set_tags(pr.tags)


def sample_text(model: CharLM, corpus: Corpus, n: int, seed: int) -> str:
    """A sample from its own generator, so sampling never moves the training RNG."""
    g = torch.Generator().manual_seed(seed)
    prime = corpus.splits["val"][:50].long().to(next(model.parameters()).device)
    ids = sample(model, prime, n, generator=g)
    return f"[prime from val]\n{corpus.decode(prime)}\n[sample, temperature 1]\n" \
           f"{corpus.decode(ids)}\n"
