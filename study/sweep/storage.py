"""Where a study lives and who runs its trials: storage URLs, the ask lock, worker
identity, heartbeats, and the recovery of trials whose worker stopped.

A running trial carries its worker (`host:pid:process start`) and a heartbeat (unix time,
stamped every HEARTBEAT_S) as user attributes, in any storage. Before asking for a trial,
a worker fails the RUNNING trials that are lost and queues their parameters again: on
its own machine, those whose process is gone; from another machine, those whose
heartbeat is older than STALE_AFTER_S.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from study.config import Config
from study.files import file_lock

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S = 30
STALE_AFTER_S = 300  # ten missed beats: generous to slow storage and unsynchronised clocks


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
    # Optuna's own heartbeat works only inside Study.optimize; workers here ask and tell,
    # and keep their own (see `heartbeat`), which works with every storage
    return optuna.storages.RDBStorage(url)


@contextlib.contextmanager
def ask_lock(url: str):
    """Serialise "count the trials, then ask for one" between the processes of this
    machine, for storages in a local file (journal, SQLite: SQLite has no row locks, so
    without this two workers can pop the same queued grid point). A database server
    (PostgreSQL, MySQL) locks the popped row itself; there, workers on several machines
    may overshoot the trial count by at most one trial each."""
    path = _local_file(url)
    with file_lock(None if path is None else f"{path}.asklock"):
        yield


def _local_file(url: str) -> str | None:
    if url.startswith("journal:"):
        return url[len("journal:"):]
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return url[len("sqlite:///"):]
    return None


def _start_ticks(pid: int) -> str | None:
    """A live process's start time (clock ticks since boot); None when it is gone. A zombie
    (exited, not yet reaped by a parent that is waiting on another worker) is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def is_alive(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a RUNNING trial's worker still runs: its process, on this machine; its
    heartbeat, from another one."""
    try:
        host, pid, ticks = trial.user_attrs["worker"].rsplit(":", 2)
    except (KeyError, ValueError):
        return True  # not ours to judge
    if host == socket.gethostname():
        return _start_ticks(int(pid)) == ticks
    beat = trial.user_attrs.get("heartbeat")
    return beat is None or time.time() - float(beat) < STALE_AFTER_S


def claim(trial: optuna.Trial) -> None:
    """Mark a just-asked trial as this worker's."""
    trial.set_user_attr("worker", identity())
    trial.set_user_attr("heartbeat", time.time())


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial):
    """Stamp the trial every HEARTBEAT_S while the block runs."""
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            try:
                trial.set_user_attr("heartbeat", time.time())
            except Exception as e:  # noqa: BLE001 - a storage hiccup must not end the trial
                print(f"trial {trial.number}: heartbeat not recorded ({e}); retrying",
                      file=sys.stderr)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def recover(study: optuna.Study, store=None) -> list[int]:
    """Fail the RUNNING trials whose worker is gone and enqueue their parameters again (the
    retry carries `retry_of` and `retry_reason`); their MLflow runs are marked KILLED."""
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_alive(t):
            continue
        job = {k: v for k, v in t.user_attrs.items() if k.startswith("job.")}  # a grid job
        reason = (f"worker {t.user_attrs['worker']} stopped during the run; queued again "
                  "(--resume continues it from its last checkpoint)") if job else (
            f"worker {t.user_attrs['worker']} stopped during the trial; its parameters were "
            "queued again")
        # the reason travels with the retry: Optuna's public API sets no attribute on a
        # trial this process did not ask for
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={**job, "retry_of": t.number,
                                                  "retry_reason": reason})
        run_id = t.user_attrs.get("mlflow_run_id")
        if store is not None and run_id:
            if not job:  # a sweep trial's run
                store.set_tags(run_id, {"trial_state": "FAIL"})
            store.mark_killed(run_id, reason)
        lost.append(t.number)
    if lost:
        what = "run(s)" if job else "trial(s)"
        print(f"{len(lost)} {what} of workers that stopped (queue numbers {lost}) are queued "
              "again", file=sys.stderr)
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
