"""Running an ablation grid: every (variant, dataset, extra axes, seed) a child MLflow run of
one parent, claimed from a work queue before it is trained.

The plan's runs go through the queue of study.sweep.queue (one per experiment, in an
Optuna storage): a run is trained by the one worker that popped it, whichever command
or machine that worker belongs to; `--workers N` starts N local workers; a command
whose jobs another worker is training waits for them and reports their results. A run
whose configuration already finished (same config hash, FINISHED in MLflow) is skipped
unless `--force`. A run whose worker died is queued again by the next worker that looks
(`--resume` continues it from its last checkpoint inside the same MLflow run).

Statuses a user sees (summary table, MLflow, exit code): finished; failed (diverged, or
probes failed after training: `--resume` probes again without retraining); killed
(Ctrl-C or SIGTERM: continue with `--resume`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from study import config as config_mod
from study.config import Config
from study.data import Corpus, corpus_key, load_corpus
from study.formats import bits, markdown_table
from study.runner import RESUME_HINT, RunLabels, run_one
from study.signals import join_workers, sigterm_as_interrupt


@dataclass
class RunSpec:
    variant: str
    dataset: str
    seed: int
    cfg: Config
    hash: str
    axes: dict  # the values of ablation.grid's extra axes for this run

    @property
    def name(self) -> str:
        """The run's name, as it reads in a chart legend: `peephole · warpeace · s0`."""
        extra = "".join(f" · {k.rsplit('.', 1)[-1]}={v}" for k, v in self.axes.items())
        return f"{self.variant} · {self.dataset}{extra} · s{self.seed}"


def config_digest(cfg: Config) -> str:
    """Identity of an ablation (its parent run): everything but where things are stored."""
    return config_mod.digest(config_mod.to_dict(cfg), drop=("tracking", "ablation.storage"))


def queue_url(cfg: Config) -> str:
    if cfg.ablation.storage:
        return cfg.ablation.storage
    path = Path(cfg.tracking.results_dir).resolve() / "optuna" / \
        f"grid-{cfg.tracking.experiment}.journal"
    return f"journal:{path}"


# ---------------------------------------------------------------------------------------
# the command's side: plan in, summary rows out


def run_ablation(cfg: Config, plan: list[RunSpec], corpora: dict[str, Corpus], *,
                 resume: bool = False, force: bool = False, progress: bool = True,
                 workers: int = 1) -> list[dict]:
    from study.sweep.queue import GridQueue

    store = None
    if cfg.tracking.enabled:
        from study import tracking

        store = tracking.Store(cfg.tracking, description=(  # created here, before any run
            f"Runs of the study harness (ablation {cfg.name!r} first). A parent run per "
            "ablation, a child per variant × dataset × seed; losses in nats/char and "
            "bits/char under loss/."))
    queue = GridQueue(queue_url(cfg), cfg.tracking.experiment)
    with queue.lock():  # one parent and one job per configuration, however many commands
        parent = _parent(store, cfg, plan, force)
        earlier = {} if force or store is None else {
            s.hash: run for s in plan if (run := store.completed(s.hash)) is not None}
        queue.fill([_job(s, parent, force) for s in plan], skip=set(earlier), store=store)
    for n, spec in enumerate(plan, 1):
        if spec.hash in earlier:
            print(f"[{n}/{len(plan)}] {spec.name}: already finished in run "
                  f"{earlier[spec.hash].run_id}, skipped (--force retrains)",
                  file=sys.stderr)
    here: dict[str, dict] = {}
    try:
        if workers > 1:
            _spawn_workers(cfg, resume, workers)
        here = drain(queue, store, corpora, Path(cfg.tracking.results_dir), resume=resume,
                     progress=progress, wait_for={s.hash for s in plan}, total=len(plan))
    except BaseException as e:
        if parent is not None:
            parent.end_after(e, RESUME_HINT)
        raise
    rows = [here.get(s.hash) or _row_elsewhere(s, store, s.hash in earlier) for s in plan]
    if parent is not None:
        table = summary_table(rows)
        parent.log_text(table.to_csv(index=False), "summary.csv")
        parent.log_text(markdown_table(table, "{:.4f}"), "summary.md")
        parent.set_tags({"runs": len(rows), "failed_runs": sum(not ok(r) for r in rows)})
        parent.end("FINISHED")
    return rows


def ok(row: dict) -> bool:
    return row["status"].startswith("finished")


def _parent(store, cfg: Config, plan: list[RunSpec], force: bool):
    if store is None:
        return None
    digest = config_digest(cfg)
    prior = None if force else next(iter(store.find(config_hash=digest, kind="ablation")),
                                    None)
    if prior is not None:
        return store.resume(prior.run_id)
    parent = store.start(cfg.name, {"kind": "ablation", "config_hash": digest},
                         description=describe(cfg, plan))
    a = cfg.ablation
    # the parent's params: the grid, and the config its runs share (not what the grid sets)
    swept = {"model.cell", "data.corpus", "train.seed", *a.grid} | (
        {"model.hidden_size"} if a.match_params_to else set())
    grid = {"ablation.variants": list(dict.fromkeys(p.variant for p in plan)),
            "ablation.datasets": list(dict.fromkeys(p.dataset for p in plan)),
            "ablation.seeds": list(dict.fromkeys(p.seed for p in plan)),
            "ablation.runs": len(plan),
            **{f"ablation.grid.{k}": v for k, v in a.grid.items()}}
    if a.match_params_to:
        grid["ablation.match_params_to"] = a.match_params_to
    parent.log_config(cfg, sections=("data", "model", "train", "probes"), extra=grid,
                      drop=swept)
    return parent


def _job(spec: RunSpec, parent, force: bool) -> dict:
    return {"hash": spec.hash, "name": spec.name, "config": config_mod.to_dict(spec.cfg),
            "axes": spec.axes, "parent": parent.run_id if parent is not None else None,
            "force": force}


def _spawn_workers(cfg: Config, resume: bool, workers: int) -> None:
    """N local worker processes on the queue; returns when they have all stopped."""
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [ctx.Process(target=_worker_entry, args=(config_mod.to_dict(cfg), resume, threads),
                         name=f"ablation-worker-{w}") for w in range(workers)]
    bad = [code for code in join_workers(procs) if code != 0]
    if bad:  # their jobs are queued again and taken up by the drain that follows
        print(f"{len(bad)} worker(s) stopped with exit codes {bad}; their runs are taken up "
              "again", file=sys.stderr)


def _worker_entry(cfg_dict: dict, resume: bool, threads: int) -> None:
    import torch

    sigterm_as_interrupt()
    torch.set_num_threads(threads)
    cfg = config_mod.from_dict(cfg_dict, "<ablation worker>")
    from study.sweep.queue import GridQueue

    store = None
    if cfg.tracking.enabled:
        from study.tracking import Store

        store = Store(cfg.tracking)
    queue = GridQueue(queue_url(cfg), cfg.tracking.experiment)
    try:
        drain(queue, store, {}, Path(cfg.tracking.results_dir), resume=resume,
              progress=False, wait_for=set(), total=None)
    except KeyboardInterrupt:
        sys.exit(130)


# ---------------------------------------------------------------------------------------
# the worker's side: take a job, train it, record the outcome


def drain(queue, store, corpora: dict[str, Corpus], results_dir: Path, *, resume: bool,
          progress: bool, wait_for: set[str], total: int | None) -> dict[str, dict]:
    """Train queued jobs until none waits and none of `wait_for` is still being trained
    by another worker. Returns the rows of the runs trained here, by config hash."""
    rows: dict[str, dict] = {}
    said_waiting = False
    while True:
        job = queue.take(store)
        if job is None:
            busy = queue.running(wait_for)
            if not busy:
                return rows
            if not said_waiting:
                print(f"waiting for {len(busy)} run(s) of this plan that another worker is "
                      "training", file=sys.stderr)
                said_waiting = True
            queue.wait_a_little()
            continue
        count = f"{len(rows) + 1}/{total}" if total else f"{len(rows) + 1}"
        rows[job.hash] = run_job(job, queue, store, corpora, results_dir, resume=resume,
                                 progress=progress, count=count)


def run_job(job, queue, store, corpora: dict[str, Corpus], results_dir: Path, *,
            resume: bool, progress: bool, count: str) -> dict:
    """Train one claimed job through run_one and record its outcome in the queue."""
    from study.sweep.queue import heartbeat

    cfg = config_mod.from_dict(job.config, f"<job {job.name}>")
    key = corpus_key(cfg.data)
    if key not in corpora:
        corpora[key] = load_corpus(cfg.data, results_dir / "cache")
    corpus = corpora[key]
    spec = RunSpec(cfg.model.cell, cfg.data.corpus, cfg.train.seed, cfg, job.hash, job.axes)
    done = store.completed(spec.hash) if store is not None and not job.force else None
    if done is not None:  # finished by another command since it was queued
        queue.finish(job, done.metrics.get("test_nats_per_char", math.nan))
        return _row_from_run(spec, done, "finished (by another worker)")
    print(f"[{count}] {spec.variant} on {spec.dataset} (seed {spec.seed}): "
          f"{corpus.vocab_size} symbols, {len(corpus.splits['train']):,} train chars",
          file=sys.stderr)
    ckpt_dir = results_dir / "checkpoints" / cfg.tracking.experiment / spec.hash
    try:
        with heartbeat(job.trial):
            out = run_one(cfg, corpus, store, _labels(spec, corpus, job.parent), ckpt_dir,
                          resume=resume, progress=progress,
                          log_checkpoint=cfg.tracking.log_checkpoint, on_run=job.note_run)
    except BaseException as e:
        queue.finish(job, None, f"{type(e).__name__}: {e}" if not isinstance(
            e, KeyboardInterrupt) else "interrupted")
        raise
    res = out.result
    queue.finish(job, res.test if out.ok else None, out.reason)
    return _row(spec, out.run_id, out.status + (f" ({out.reason})" if out.reason else ""),
                res.num_params, res.epochs, res.best_val, res.test, res.seconds)


def _labels(spec: RunSpec, corpus: Corpus, parent_id: str | None) -> RunLabels:
    m = spec.cfg.model
    return RunLabels(spec.name, {
        "kind": "train", "variant": spec.variant, "dataset": spec.dataset,
        "seed": spec.seed, "config_hash": spec.hash,
        "vocab_size": corpus.vocab_size, "num_layers": m.num_layers, "hidden_size": m.hidden_size,
        # the row of Karpathy15's Table 1: the width before any parameter matching
        "row_width": spec.axes.get("model.hidden_size", m.hidden_size)
        if spec.cfg.ablation.match_params_to else m.hidden_size}, parent_id)


# ---------------------------------------------------------------------------------------
# rows of the summary table


def _row(spec: RunSpec, run_id: str, status: str, params: int, epochs: int,
         best_val: float, test: float, seconds: float) -> dict:
    m = spec.cfg.model
    return {"variant": spec.variant, "dataset": spec.dataset, "layers": m.num_layers,
            "hidden": m.hidden_size, "seed": spec.seed, "params": params, "epochs": epochs,
            "best val nats/char": best_val, "test nats/char": test,
            "test bits/char": bits(test), "minutes": seconds / 60, "status": status,
            "run_id": run_id}


def _row_from_run(spec: RunSpec, run, status: str) -> dict:
    m = run.metrics
    secs = (run.end_ms - run.start_ms) / 1000 if run.end_ms else math.nan
    return _row(spec, run.run_id, status, int(run.tags.get("num_params", 0)),
                int(m.get("epochs_trained", 0)), m.get("best_val_nats_per_char", math.nan),
                m.get("test_nats_per_char", math.nan), secs)


def _row_elsewhere(spec: RunSpec, store, earlier: bool) -> dict:
    """The row of a run this command did not train: finished earlier, or trained by
    another worker (read back from MLflow)."""
    run = store.completed(spec.hash) if store is not None else None
    if run is not None:
        return _row_from_run(spec, run, "finished (earlier run)" if earlier
                             else "finished (by another worker)")
    run = store.latest(spec.hash) if store is not None else None
    if run is not None:
        reason = run.tags.get("failure_reason", "")
        return _row_from_run(spec, run, f"{run.status.lower()} ({reason})")
    return _row(spec, "", "trained by another worker (tracking off: no result here)", 0, 0,
                math.nan, math.nan, math.nan)


def summary_table(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def describe(cfg: Config, plan: list[RunSpec]) -> str:
    m, t = cfg.model, cfg.train
    grid = "".join(f" × {k} {v}" for k, v in cfg.ablation.grid.items())
    match = (f" (widths matched to {cfg.ablation.match_params_to}'s parameter count)"
             if cfg.ablation.match_params_to else "")
    return (f"{cfg.name}: {len(plan)} runs — variants {sorted({p.variant for p in plan})} × "
            f"datasets {sorted({p.dataset for p in plan})}{grid} × seeds "
            f"{sorted({p.seed for p in plan})}; {m.num_layers}×{m.hidden_size} units{match}, "
            f"{t.optimizer} lr {t.lr:g}, batch {t.batch_size}"
            + ("" if "train.seq_len" in cfg.ablation.grid else f", seq {t.seq_len}")
            + (f", k1 {t.k1}" if t.k1 is not None else "")
            + f", up to {t.epochs} epochs. Losses in nats/char (bits = nats / ln 2).")
