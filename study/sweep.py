"""The Optuna side (the only module that imports optuna): studies of TBPTT and clipping.

`python -m study.run configs/sweep_bptt_clip.yaml [--workers N]` runs an Optuna study
when the config's `sweep.enabled` is true. Each trial trains model.cell on data.corpus
with its own k2 (steps back-propagated), k1 (new steps per update, a fraction of k2),
clipping scheme and threshold (and optionally learning rate) for a fixed budget of
train.epochs, reporting the validation loss (nats/char) every epoch so that the pruner
can stop bad trials; the objective is the validation loss after the last epoch.

Storage: the default is a journal file under <results>/optuna/, safe for several
processes on one machine; any Optuna storage URL works (postgresql://... for workers on
several machines, which then get Optuna's heartbeat). Re-running the same command
resumes the study by name.

Bookkeeping, so that no trial is lost or trained twice:
- Grid points are enqueued once, by the process that starts the study; workers pop them
  atomically, so parallel workers never take the same point.
- Every trial records the worker running it (host, pid, process start). A RUNNING trial
  whose worker is gone (killed, crashed) is marked failed with that reason and its
  parameters are enqueued again, before any new trial is asked for.
- "Count, then ask" happens under a file lock next to the journal, so the number of
  finished trials is exactly the one asked for.
- A TPE or random suggestion equal to a finished trial's parameters takes that trial's
  outcome instead of training again (tagged duplicate_of).

MLflow: one parent run per study, one child run per trial, written by the objective
itself (per-epoch metrics, params, trial number and state as tags). At the end the parent
gets the best trial, parameter importances (PED-ANOVA and fANOVA) and figures.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from study import config as config_mod
from study.config import Config, ConfigError, parse_clip, updated
from study.data import load_corpus

optuna.logging.set_verbosity(optuna.logging.WARNING)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


class Diverged(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------
# storage, study, identity


def study_name(cfg: Config) -> str:
    return cfg.sweep.name or cfg.name


def storage_url(cfg: Config) -> str:
    if cfg.sweep.storage:
        return cfg.sweep.storage
    path = Path(cfg.tracking.results_dir).resolve() / "optuna" / f"{study_name(cfg)}.journal"
    return f"journal:{path}"


def open_storage(url: str):
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=30, grace_period=120,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(3))


@contextlib.contextmanager
def ask_lock(url: str):
    """Serialise "count the trials, then ask for one" between the processes of this
    machine (journal storage); with a database, workers on several machines may overshoot
    the trial count by at most one trial each."""
    if not url.startswith("journal:"):
        yield
        return
    with open(url[len("journal:"):] + ".asklock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _start_ticks(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def is_alive(worker: str) -> bool:
    """Whether the process of a trial's `worker` attribute still runs (on another host we
    cannot tell here: the database's heartbeat does)."""
    try:
        host, pid, ticks = worker.rsplit(":", 2)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    return _start_ticks(int(pid)) == ticks


def recover(study: optuna.Study, store=None) -> list[int]:
    """Fail the RUNNING trials whose worker is gone and enqueue their parameters again."""
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker is None or is_alive(worker):
            continue
        reason = f"worker {worker} stopped during the trial; its parameters were queued again"
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        run_id = t.user_attrs.get("mlflow_run_id")
        if store is not None and run_id:
            store.client.set_tag(run_id, "failure_reason", reason)
            store.client.set_tag(run_id, "trial_state", "FAIL")
            store.client.set_terminated(run_id, "KILLED")
        lost.append(t.number)
    if lost:
        print(f"recovered trials {lost} of workers that stopped; their parameters run again",
              file=sys.stderr)
    return lost


def counted(study: optuna.Study) -> int:
    """Trials that count towards sweep.trials: finished (complete, pruned, diverged) or
    running."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in COUNTED or t.state == TrialState.RUNNING or (
                t.state == TrialState.FAIL and t.user_attrs.get("diverged")):
            n += 1
    return n


# ---------------------------------------------------------------------------------------
# the search space


def suggest(trial: optuna.Trial, s: config_mod.SweepConfig) -> dict:
    """The trial's parameters (fixed ones when it was enqueued from the grid)."""
    p = {"k2": trial.suggest_int("k2", s.k2_min, s.k2_max, log=True),
         "k1_fraction": trial.suggest_categorical("k1_fraction", _fractions(s)),
         "clip_mode": trial.suggest_categorical("clip_mode", _modes(s))}
    if p["clip_mode"] != "none":
        p["clip_value"] = trial.suggest_float("clip_value", s.clip_min, s.clip_max, log=True)
    if s.lr_min is not None or (s.sampler == "grid" and s.grid_lr):
        lo, hi = (s.lr_min, s.lr_max) if s.lr_min is not None else \
            (min(s.grid_lr), max(s.grid_lr))
        p["lr"] = trial.suggest_float("lr", lo, hi, log=True)
    return p


def _fractions(s):
    return sorted(set(s.k1_fractions) | (set(s.grid_k1_fraction) if s.sampler == "grid"
                                         else set()))


def _modes(s):
    modes = list(s.clip_modes)
    if s.sampler == "grid":
        modes += [parse_clip(c)[0] for c in s.grid_clip if parse_clip(c)[0] not in modes]
    return modes


def grid_points(s: config_mod.SweepConfig) -> list[dict]:
    points = []
    for k2 in s.grid_k2:
        for f in s.grid_k1_fraction:
            for clip in s.grid_clip:
                mode, value = parse_clip(clip)
                for lr in s.grid_lr or [None]:
                    p = {"k2": k2, "k1_fraction": f, "clip_mode": mode}
                    if value is not None:
                        p["clip_value"] = value
                    if lr is not None:
                        p["lr"] = lr
                    points.append(p)
    return points


def param_key(params: dict) -> str:
    return json.dumps({k: (float(v) if isinstance(v, float) else v)
                       for k, v in sorted(params.items())}, sort_keys=True)


def trial_config(cfg: Config, p: dict) -> Config:
    k2 = int(p["k2"])
    changes = {"train.seq_len": k2, "train.k1": max(1, round(p["k1_fraction"] * k2)),
               "train.clip": p["clip_mode"]}
    if "clip_value" in p:
        changes["train.clip_value"] = float(p["clip_value"])
    if "lr" in p:
        changes["train.lr"] = float(p["lr"])
    return updated(cfg, changes)


def clip_label(p: dict) -> str:
    return "none" if p.get("clip_mode") == "none" else f"{p['clip_mode']}:{p['clip_value']:g}"


def make_sampler(s: config_mod.SweepConfig, worker: int = 0):
    seed = s.seed + worker
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: points are enqueued


def make_pruner(cfg: Config):
    s = cfg.sweep
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials,
                                           n_warmup_steps=s.pruner_warmup_epochs)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, s.pruner_warmup_epochs),
                                              max_resource=cfg.train.epochs)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------------------
# one trial


def run_trial(study, trial, cfg: Config, corpus, store, parent, progress: bool) -> float:
    from study.train import train

    params = suggest(trial, cfg.sweep)
    twin = _twin(study, trial, params)
    if twin is not None:
        trial.set_user_attr("duplicate_of", twin.number)
        print(f"trial {trial.number}: same parameters as trial {twin.number}, not trained "
              "again", file=sys.stderr)
        if twin.state == TrialState.COMPLETE:
            return twin.value
        if twin.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"duplicate of pruned trial {twin.number}")
        trial.set_user_attr("diverged", True)
        raise Diverged(twin.user_attrs.get("fail_reason", f"as trial {twin.number}"))
    child = trial_config(cfg, params)
    tracker = None
    if store is not None:
        tracker = store.start(f"trial-{trial.number}", {
            "kind": "trial", "study": study.study_name, "trial_number": trial.number,
            "variant": child.model.cell, "dataset": child.data.corpus,
            "config_hash": config_mod.run_hash(child), "data_sha256": corpus.sha256,
            "clip": clip_label(params), "k2": params["k2"]}, parent=parent)
        tracker.log_config(child)
        tracker.log_params({f"trial.{k}": v for k, v in params.items()})
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
    print(f"trial {trial.number}: k2={params['k2']} k1={child.train.k1} "
          f"clip={clip_label(params)} lr={child.train.lr:g}", file=sys.stderr)

    def report(epoch, row):
        val = row["val_nats_per_char"]
        trial.report(val, epoch)
        # after the last epoch the budget is spent: the trial is complete, not pruned
        if epoch < child.train.epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: val {val:.4f} nats/char")

    ckpt = Path(cfg.tracking.results_dir) / "checkpoints" / cfg.tracking.experiment / \
        f"{study.study_name}-trial{trial.number}"
    try:
        res = train(child, corpus, tracker, ckpt, progress=progress, on_epoch=report)
    except optuna.TrialPruned as e:
        trial.set_user_attr("pruned_reason", str(e))
        if tracker is not None:
            tracker.set_tags({"trial_state": "PRUNED"})
            tracker.end("KILLED", str(e))
        raise
    except BaseException as e:
        if tracker is not None:
            tracker.set_tags({"trial_state": "FAIL"})
            tracker.end("FAILED", f"{type(e).__name__}: {e}")
        raise
    if res.status != "finished":
        trial.set_user_attr("diverged", True)
        trial.set_user_attr("fail_reason", res.reason)
        if tracker is not None:
            tracker.set_tags({"trial_state": "FAIL"})
            tracker.end("FAILED", res.reason)
        raise Diverged(res.reason)
    value = res.history[-1]["val_nats_per_char"]
    trial.set_user_attr("best_val_nats_per_char", res.best_val)
    trial.set_user_attr("test_nats_per_char", res.test)
    if tracker is not None:
        tracker.set_tags({"trial_state": "COMPLETE"})
        tracker.end("FINISHED")
    return value


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
            if t.state == TrialState.RUNNING and is_alive(t.user_attrs.get("worker", "")):
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
    store = parent = None
    if cfg.tracking.enabled:
        from study.tracking import RunTracker, Store

        store = Store(cfg.tracking)
        parent = RunTracker(store.client, parent_run_id) if parent_run_id else None
    corpus = load_corpus(cfg.data, Path(cfg.tracking.results_dir) / "cache")
    surprises = 0
    while True:
        with ask_lock(url):
            recover(study, store)
            if counted(study) >= target:
                return
            trial = study.ask()
            trial.set_user_attr("worker", identity())
        try:
            study.tell(trial, run_trial(study, trial, cfg, corpus, store, parent, progress))
            surprises = 0
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except Diverged as e:
            trial.set_user_attr("fail_reason", str(e))
            study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number} diverged: {e}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - record, go on, but not forever
            traceback.print_exc()
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
            study.tell(trial, state=TrialState.FAIL)
            surprises += 1
            if surprises >= 3:
                raise RuntimeError("three trials in a row failed unexpectedly; stopping") from e


def _worker_entry(*args) -> None:
    work(*args)


# ---------------------------------------------------------------------------------------
# the study


def run_sweep(cfg: Config, workers: int | None = None, progress: bool = True) -> dict:
    s = cfg.sweep
    workers = workers or s.workers
    name, url = study_name(cfg), storage_url(cfg)
    corpus = load_corpus(cfg.data, Path(cfg.tracking.results_dir) / "cache")  # fail early
    del corpus
    digest = _digest(cfg)
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="minimize",
                                load_if_exists=True, sampler=make_sampler(s),
                                pruner=make_pruner(cfg))
    if study.user_attrs.get("config_digest", digest) != digest:
        raise ConfigError(f"study {name!r} in {url} was started with another configuration; "
                          "resume it with the same config, or set sweep.name to start anew")
    study.set_user_attr("config_digest", digest)
    store = parent = None
    if cfg.tracking.enabled:
        from study.tracking import RunTracker, Store

        store = Store(cfg.tracking)
        run_id = study.user_attrs.get("mlflow_parent_run_id")
        if run_id and store.client.get_run(run_id).info.experiment_id == store.experiment_id:
            parent = store.start(name, {}, run_id=run_id)
        else:
            parent = store.start(name, {"kind": "study", "study": name, "config_hash": digest,
                                        "storage": url, "mlflow.note.content": _describe(cfg)})
            parent.log_config(cfg)
            study.set_user_attr("mlflow_parent_run_id", parent.run_id)
        assert isinstance(parent, RunTracker)
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
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            bad = [p.exitcode for p in procs if p.exitcode != 0]
            if bad:
                raise RuntimeError(f"{len(bad)} worker(s) exited with codes {bad}; re-run the "
                                   "command to resume the study")
    except BaseException as e:
        if parent is not None:
            killed = isinstance(e, KeyboardInterrupt)
            parent.end("KILLED" if killed else "FAILED",
                       "interrupted; re-run to resume" if killed else f"{type(e).__name__}: {e}")
        raise
    minutes = (time.perf_counter() - t0) / 60
    summary = summarise(study, cfg, parent, minutes)
    if parent is not None:
        parent.end("FINISHED")
    return summary


def _digest(cfg: Config) -> str:
    d = config_mod.to_dict(cfg)
    d.pop("tracking")
    d["sweep"].pop("workers")
    d["sweep"].pop("trials")  # asking for more trials continues the same study
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _describe(cfg: Config) -> str:
    s = cfg.sweep
    space = (f"grid k2 {s.grid_k2} × k1/k2 {s.grid_k1_fraction} × clip {s.grid_clip}"
             + (f" × lr {s.grid_lr}" if s.grid_lr else "")) if s.sampler == "grid" else (
        f"k2 {s.k2_min}..{s.k2_max} (log) × k1/k2 {s.k1_fractions} × clip {s.clip_modes} "
        f"{s.clip_min}..{s.clip_max}" + (f" × lr {s.lr_min}..{s.lr_max}" if s.lr_min else ""))
    return (f"Optuna study of TBPTT and clipping: {cfg.model.cell} on {cfg.data.corpus}, "
            f"{cfg.model.num_layers}×{cfg.model.hidden_size}, {cfg.train.epochs} epochs per "
            f"trial; {s.sampler} sampler, {s.pruner} pruner; {space}. Objective: validation "
            "loss after the last epoch, nats/char.")


# ---------------------------------------------------------------------------------------
# the end of a study


def trials_table(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        p = t.params
        rows.append({
            "trial": t.number, "state": t.state.name, "val_nats_per_char": t.value,
            "k2": p.get("k2"), "k1_fraction": p.get("k1_fraction"),
            "k1": max(1, round(p["k1_fraction"] * p["k2"])) if "k2" in p else None,
            "clip": clip_label(p) if "clip_mode" in p else None, "lr": p.get("lr"),
            "epochs_reported": len(t.intermediate_values),
            "last_reported_val": (t.intermediate_values[max(t.intermediate_values)]
                                  if t.intermediate_values else None),
            "minutes": (t.duration.total_seconds() / 60) if t.duration else None,
            "reason": t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason"),
            "duplicate_of": t.user_attrs.get("duplicate_of"),
            "retry_of": t.user_attrs.get("retry_of"),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id")})
    return pd.DataFrame(rows)


def importances(study: optuna.Study) -> pd.DataFrame:
    """PED-ANOVA and fANOVA importances over the complete trials, where they can be had."""
    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    rows = []
    for label, evaluator in (("PED-ANOVA", PedAnovaImportanceEvaluator()),
                             ("fANOVA", FanovaImportanceEvaluator(seed=0))):
        try:
            imp = get_param_importances(study, evaluator=evaluator)
        except Exception as e:  # noqa: BLE001 - too few trials, or no variation
            print(f"{label} importances unavailable: {e}", file=sys.stderr)
            continue
        rows += [{"method": label, "param": k, "importance": v} for k, v in imp.items()]
    return pd.DataFrame(rows, columns=["method", "param", "importance"])


def _given(v) -> bool:
    return v is not None and v == v  # neither None nor NaN


def summarise(study: optuna.Study, cfg: Config, parent, minutes: float) -> dict:
    from study import figures

    table = trials_table(study)
    complete = table[table.state == "COMPLETE"]
    out = {"trials": len(table), "complete": len(complete),
           "pruned": int((table.state == "PRUNED").sum()),
           "failed": int((table.state == "FAIL").sum()), "minutes": minutes, "table": table}
    best = None
    if len(complete):
        best = complete.loc[complete.val_nats_per_char.idxmin()]
        out["best"] = best
    imp = importances(study) if len(complete) >= 2 else pd.DataFrame()
    out["importances"] = imp
    print(f"\nStudy {study.study_name!r}: {out['complete']} complete, {out['pruned']} pruned, "
          f"{out['failed']} failed (incl. lost workers' trials, run again) in {minutes:.1f} min")
    if best is not None:
        print(f"best: trial {best.trial} — k2 {best.k2}, k1 {best.k1}, clip {best['clip']}"
              + (f", lr {best.lr:g}" if _given(best.lr) else "")
              + f": val {best.val_nats_per_char:.4f} nats/char "
              f"({best.val_nats_per_char / math.log(2):.4f} bits/char)")
    if len(imp):
        for method, sub in imp.groupby("method"):
            print(f"{method} importance: " + ", ".join(
                f"{r.param} {r.importance:.2f}" for r in sub.itertuples()))
    if parent is None:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        table.to_csv(d / "trials.csv", index=False)
        if len(imp):
            imp.to_csv(d / "importances.csv", index=False)
        for fname, fig in (("optimization_history.png", figures.history_plot(table)),
                           ("bptt_clip_heatmap.png", figures.bptt_clip_heatmap(table)),
                           ("importances.png", figures.importance_bars(imp)
                            if len(imp) else None)):
            if fig is not None:
                fig.savefig(d / fname, dpi=120)
                figures.plt.close(fig)
        parent.log_artifacts(d, "study")
    metrics = {"trials_complete": out["complete"], "trials_pruned": out["pruned"],
               "trials_failed": out["failed"], "sweep_minutes": minutes}
    tags = {}
    if best is not None:
        metrics["best_val_nats_per_char"] = best.val_nats_per_char
        metrics["best_val_bits_per_char"] = best.val_nats_per_char / math.log(2)
        tags.update({"best_trial": int(best.trial), "best_run_id": best.mlflow_run_id,
                     "best_params": f"k2={best.k2} k1={best.k1} clip={best['clip']}"
                     + (f" lr={best.lr:g}" if _given(best.lr) else "")})
    for r in imp.itertuples():
        metrics[f"importance.{r.method}.{r.param}"] = r.importance
    parent.log_metrics(metrics)
    parent.set_tags(tags)
    return out
