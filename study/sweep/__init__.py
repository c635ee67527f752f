"""The Optuna side (the only package that imports optuna): studies of TBPTT and clipping.

`python -m study.run configs/sweep_bptt_clip.yaml [--workers N]` runs an Optuna study
when the config's `sweep.enabled` is true. Each trial trains model.cell on data.corpus
with its own k2 (steps back-propagated), k1 (new steps per update: a fraction of k2, or
fixed by sweep.k1 so that only k2 varies), clipping scheme (none, norm, value, preact)
and threshold (and optionally learning rate) for a fixed budget of train.epochs,
reporting the validation loss (nats/char) every epoch so that the pruner can stop bad
trials; the objective is the validation loss after the last epoch.

Storage: the default is a journal file under <results>/optuna/, safe for several
processes on one machine; any Optuna storage URL works (postgresql://... for workers on
several machines). Re-running the same command resumes the study by name.

Bookkeeping, so that no trial is lost or trained twice:
- Grid points are enqueued once, by the process that starts the study; workers pop them
  atomically, so parallel workers never take the same point.
- Every trial records the worker running it (host, pid, process start) and a heartbeat
  every 30 s. A RUNNING trial whose worker is gone (its process, on this machine; its
  heartbeat stale for 5 minutes, from another) is marked failed with that reason and its
  parameters are enqueued again, before any new trial is asked for.
- "Count, then ask" happens under a file lock next to the journal, so the number of
  finished trials is exactly the one asked for.
- A TPE or random suggestion equal to a finished trial's parameters takes that trial's
  outcome instead of training again (tagged duplicate_of).

A trial whose training diverged (a non-finite loss, or one above divergence_factor × the
initial) is a result, not a failure of the study: it is COMPLETE with the value
`diverged_value` (by default ln V nats/char, the uniform prediction's loss), `diverged`
set and its reason kept; its MLflow run ends FAILED with the reason and is tagged
`trial_state` DIVERGED and `outcome` diverged.

MLflow: one parent run per study, one child run per trial, written by the objective
itself (per-epoch metrics, params, trial number and state as tags). At the end the parent
gets the best trial, parameter importances (PED-ANOVA and fANOVA) and figures.

Modules: this one runs trials and workers; `storage` (where the study lives, who runs
which trial), `space` (the search space, samplers, pruners), `summary` (the end of a
study).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from study import config as config_mod
from study.config import Config, ConfigError
from study.data import load_corpus
from study.runner import Pruned, RunLabels, run_one
from study.signals import join_workers, sigterm_as_interrupt
from study.sweep.space import (
    clip_label,
    grid_points,
    make_pruner,
    make_sampler,
    param_key,
    suggest,
    trial_config,
)
from study.sweep.storage import (
    COUNTED,
    ask_lock,
    claim,
    counted,
    heartbeat,
    is_alive,
    open_storage,
    recover,
    storage_url,
    study_name,
)
from study.sweep.summary import summarise

__all__ = ["open_storage", "param_key", "run_sweep"]

optuna.logging.set_verbosity(optuna.logging.WARNING)
RESUME_HINT = "re-run the command to resume the study"


class ProbesFailed(RuntimeError):
    """A trial that trained but whose probes failed (the reason says which)."""


# ---------------------------------------------------------------------------------------
# one trial


def run_trial(study, trial, cfg: Config, corpus, store, parent_id: str | None,
              progress: bool) -> float:
    """Train one trial through run_one and return its objective (a diverged trial's is
    diverged_value); raises optuna.TrialPruned or ProbesFailed for the other outcomes."""
    params = suggest(trial, cfg.sweep)
    twin = _twin(study, trial, params)
    if twin is not None:
        trial.set_user_attr("duplicate_of", twin.number)
        print(f"trial {trial.number}: same parameters as trial {twin.number}, not trained "
              "again", file=sys.stderr)
        if twin.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"duplicate of pruned trial {twin.number}")
        if twin.user_attrs.get("diverged"):  # COMPLETE, or FAIL in an older study
            trial.set_user_attr("diverged", True)
            trial.set_user_attr("fail_reason", twin.user_attrs.get("fail_reason",
                                                                   f"as trial {twin.number}"))
            return diverged_value(cfg, corpus)
        return twin.value
    child = trial_config(cfg, params)
    trial.set_user_attr("k1", child.train.k1)
    labels = RunLabels(trial_name(child, params), {
        "kind": "trial", "study": study.study_name, "trial_number": trial.number,
        "variant": child.model.cell, "dataset": child.data.corpus,
        "config_hash": config_mod.run_hash(child), "clip": clip_label(params),
        "k2": params["k2"]}, parent_id)
    print(f"trial {trial.number}: k2={params['k2']} k1={child.train.k1} "
          f"clip={clip_label(params)} lr={child.train.lr:g}", file=sys.stderr)

    def report(rep):
        val = rep.metrics["val_nats_per_char"]
        trial.report(val, rep.epoch)
        # after the last epoch the budget is spent: the trial is complete, not pruned
        if rep.epoch < child.train.epochs and trial.should_prune():
            raise Pruned(f"pruned after epoch {rep.epoch}: val {val:.4f} nats/char")

    ckpt = Path(cfg.tracking.results_dir) / "checkpoints" / cfg.tracking.experiment / \
        f"{study.study_name}-trial{trial.number}"
    run_ids = []

    def noted(run_id: str) -> None:
        run_ids.append(run_id)
        trial.set_user_attr("mlflow_run_id", run_id)

    def state(name: str) -> None:
        if store is not None and run_ids:
            store.set_tags(run_ids[0], {"trial_state": name})

    try:
        out = run_one(child, corpus, store, labels, ckpt, take_up=False, progress=progress,
                      log_checkpoint=cfg.sweep.keep_checkpoints and cfg.tracking.log_checkpoint,
                      resume_hint=RESUME_HINT, on_epoch=report,
                      on_run=noted)
    except BaseException:
        state("FAIL")
        raise
    if out.status == "pruned":
        trial.set_user_attr("pruned_reason", out.reason)
        state("PRUNED")
        raise optuna.TrialPruned(out.reason)
    if out.status == "failed":  # diverged: a result of the study, not a failure of it
        value = diverged_value(cfg, corpus)
        history = out.result.history if out.result is not None else []
        trial.set_user_attr("diverged", True)
        trial.set_user_attr("fail_reason", out.reason)
        if history:
            trial.set_user_attr("last_finite_val_nats_per_char",
                                history[-1]["val_nats_per_char"])
        if store is not None and run_ids:
            store.set_tags(run_ids[0], {"trial_state": "DIVERGED", "outcome": "diverged",
                                        "objective_value": f"{value:.6g}"})
        print(f"trial {trial.number} diverged ({out.reason}); its value is the stated "
              f"penalty {value:.4f} nats/char", file=sys.stderr)
        return value
    if out.status == "probes failed":
        state("FAIL")
        raise ProbesFailed(out.reason)
    res = out.result
    trial.set_user_attr("best_val_nats_per_char", res.best_val)
    trial.set_user_attr("test_nats_per_char", res.test)
    state("COMPLETE")
    return res.history[-1]["val_nats_per_char"]


def diverged_value(cfg: Config, corpus) -> float:
    """The objective of a diverged trial: sweep.diverged_value, by default ln V nats/char,
    the loss of the uniform prediction over the corpus's V characters (a model that has
    learned nothing). A diverged trial is COMPLETE with this value and `diverged` set, so
    that samplers learn to avoid it and the study counts it as a result."""
    v = cfg.sweep.diverged_value
    return float(v) if v is not None else math.log(corpus.vocab_size)


def trial_name(child: Config, params: dict) -> str:
    """A trial's run name, as it reads in a chart legend: `k2=50 · clip=norm:0.5`, with k1
    when it is not k2 and the learning rate when it is searched."""
    t = child.train
    return " · ".join([f"k2={t.seq_len}", *([f"k1={t.k1}"] if t.k1 not in (None, t.seq_len)
                                          else []),
                       f"clip={clip_label(params)}",
                       *([f"lr={t.lr:.3g}"] if "lr" in params else [])])


def _twin(study, trial, params):
    """A finished trial with the same parameters (waiting for a running one)."""
    key = param_key(params)
    while True:
        running = False
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number or param_key(t.params) != key:
                continue
            if t.state in COUNTED or (t.state == TrialState.FAIL and t.user_attrs.get("diverged")):
                return t
            if t.state == TrialState.RUNNING and is_alive(t):
                running = True
        if not running:
            return None
        time.sleep(5)


# ---------------------------------------------------------------------------------------
# workers


def work(cfg_dict: dict, url: str, name: str, parent_run_id: str | None, worker: int,
         target: int, threads: int | None, progress: bool) -> None:
    """One worker: ask for trials and run them until `target` trials count."""
    cfg = config_mod.from_dict(cfg_dict, "<sweep worker>")
    if threads:
        torch.set_num_threads(threads)
    study = optuna.load_study(study_name=name, storage=open_storage(url),
                              sampler=make_sampler(cfg.sweep, worker), pruner=make_pruner(cfg))
    store = None
    if cfg.tracking.enabled:
        from study.tracking import Store

        store = Store(cfg.tracking)
    corpus = load_corpus(cfg.data, Path(cfg.tracking.results_dir) / "cache")
    surprises = 0
    while True:
        with ask_lock(url):
            recover(study, store)
            if counted(study) >= target:
                return
            trial = study.ask()
            claim(trial)
        try:
            with heartbeat(trial):
                value = run_trial(study, trial, cfg, corpus, store, parent_run_id, progress)
            study.tell(trial, value)
            surprises = 0
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except ProbesFailed as e:  # trained, but the user must see it: not counted
            trial.set_user_attr("fail_reason", str(e)[:2000])
            study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number}: {e}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - record, go on, but not forever
            traceback.print_exc()
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
            study.tell(trial, state=TrialState.FAIL)
            surprises += 1
            if surprises >= 3:
                raise RuntimeError("three trials in a row failed unexpectedly; stopping") from e


def _worker_entry(*args) -> None:
    sigterm_as_interrupt()
    try:
        work(*args)
    except KeyboardInterrupt:  # its trial stays RUNNING and is queued again when found
        sys.exit(130)


# ---------------------------------------------------------------------------------------
# the study


def run_sweep(cfg: Config, workers: int | None = None, progress: bool = True) -> dict:
    s = cfg.sweep
    workers = workers or s.workers
    name, url = study_name(cfg), storage_url(cfg)
    corpus = load_corpus(cfg.data, Path(cfg.tracking.results_dir) / "cache")  # fail early
    del corpus
    # asking for more trials or workers continues the same study
    digest = config_mod.digest(config_mod.to_dict(cfg),
                               drop=("tracking", "sweep.workers", "sweep.trials"))
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="minimize",
                                load_if_exists=True, sampler=make_sampler(s),
                                pruner=make_pruner(cfg))
    if study.user_attrs.get("config_digest", digest) != digest:
        raise ConfigError(f"study {name!r} in {url} was started with another configuration; "
                          "resume it with the same config, or set sweep.name to start anew")
    study.set_user_attr("config_digest", digest)
    store = parent = None
    if cfg.tracking.enabled:
        from study.tracking import Store

        store = Store(cfg.tracking, description=(
            f"Runs of the study harness (Optuna study {name!r} first). A parent run per "
            "study, a child per trial; losses in nats/char and bits/char under loss/."))
        run_id = study.user_attrs.get("mlflow_parent_run_id")
        if run_id and store.has_run(run_id):
            parent = store.resume(run_id)
        else:
            parent = store.start(name, {"kind": "study", "study": name, "config_hash": digest,
                                        "storage": url}, description=_describe(cfg))
            # the study's params: its search space, and the config its trials share
            swept = {"train.seq_len", "train.k1", "train.clip", "train.clip_value"} | (
                {"train.lr"} if s.lr_min is not None or s.grid_lr else set())
            parent.log_config(cfg, sections=("data", "model", "train", "probes", "sweep"),
                              drop=swept)
            study.set_user_attr("mlflow_parent_run_id", parent.run_id)
    with ask_lock(url):
        recover(study, store)
        target = s.trials
        if s.sampler == "grid":
            points = grid_points(s)
            target = min(s.trials, len(points))
            have = {param_key(t.params) for t in study.get_trials(deepcopy=False)
                    if t.state != TrialState.FAIL or t.user_attrs.get("diverged")}
            have |= {param_key(t.params) for t in study.get_trials(
                deepcopy=False, states=(TrialState.WAITING,))}
            for p in points[:target]:
                if param_key(p) not in have:
                    study.enqueue_trial(p)
    done_before = counted(study)
    print(f"study {name!r}: {done_before} of {target} trials counted so far; {workers} "
          f"worker(s); storage {url}", file=sys.stderr)
    t0 = time.perf_counter()
    args = (config_mod.to_dict(cfg), url, name, parent.run_id if parent else None)
    threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        if workers == 1:
            work(*args, 0, target, None, progress)
        else:
            ctx = multiprocessing.get_context("spawn")
            procs = [ctx.Process(target=_worker_entry, args=(*args, w, target, threads, False))
                     for w in range(workers)]
            bad = [code for code in join_workers(procs) if code != 0]
            if bad and _after_dead_workers(study, store, url, bad):
                work(*args, 0, target, None, progress)
    except BaseException as e:
        if parent is not None:
            parent.end_after(e, RESUME_HINT)
        raise
    minutes = (time.perf_counter() - t0) / 60
    summary = summarise(study, cfg, parent, minutes)
    if parent is not None:
        parent.end("FINISHED")
    return summary


def _after_dead_workers(study, store, url: str, codes: list[int]) -> bool:
    """Workers that died leave the study complete (the others took up their trials) or
    not; returns whether trials are left for this process to run."""
    with ask_lock(url):
        recover(study, store)
    left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    print(f"{len(codes)} worker(s) stopped (exit codes {codes}); "
          + ("their trials were run again by the others" if not left else
             f"{len(left)} trial(s) left, run here"), file=sys.stderr)
    return bool(left)


def _describe(cfg: Config) -> str:
    s = cfg.sweep
    k1 = f"k1 = {s.k1} fixed" if s.k1 is not None else None
    space = (f"grid k2 {s.grid_k2} × {k1 or f'k1/k2 {s.grid_k1_fraction}'} × clip {s.grid_clip}"
             + (f" × lr {s.grid_lr}" if s.grid_lr else "")) if s.sampler == "grid" else (
        f"k2 {s.k2_min}..{s.k2_max} (log) × {k1 or f'k1/k2 {s.k1_fractions}'} × clip "
        f"{s.clip_modes} "
        f"{s.clip_min}..{s.clip_max}" + (f" × lr {s.lr_min}..{s.lr_max}" if s.lr_min else ""))
    return (f"Optuna study of TBPTT and clipping: {cfg.model.cell} on {cfg.data.corpus}, "
            f"{cfg.model.num_layers}×{cfg.model.hidden_size}, {cfg.train.epochs} epochs per "
            f"trial; {s.sampler} sampler, {s.pruner} pruner; {space}. Objective: validation "
            "loss after the last epoch, nats/char.")
