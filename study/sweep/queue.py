"""The ablation's grid as a work queue in an Optuna storage, so that a configuration is
claimed before it is trained and trained once, however many processes share a store.

One queue per MLflow experiment (an Optuna study named `grid:<experiment>`, in a journal
file under <results>/optuna/ or in `ablation.storage`, e.g. PostgreSQL for several
machines). A job is a WAITING trial whose user attributes carry everything needed to
train it (`job.hash`, the full child config, its run name and parent run), so any worker
of any command on the same storage can take it:

- `fill` enqueues the jobs of a plan that are not already waiting, running (with a live
  worker) or done; it runs under the same lock as `take`, so two identical commands
  started at once enqueue each job once.
- `take` pops one waiting job (Optuna pops a WAITING trial atomically: a row lock in a
  database, the journal's lock in a file), stamps it with this worker and a heartbeat,
  after failing and re-queueing the jobs of workers that are gone (study.sweep.storage).
- `finish` records the outcome; `running` tells which of a plan's jobs another worker
  still trains, so that a command can wait for them instead of training them again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from study.sweep.storage import ask_lock, claim, heartbeat, is_alive, open_storage, recover

__all__ = ["GridQueue", "Job", "heartbeat"]


@dataclass
class Job:
    trial: optuna.Trial
    hash: str
    name: str
    config: dict
    axes: dict
    parent: str | None
    force: bool = False  # retrain even if the configuration finished earlier

    def note_run(self, run_id: str) -> None:
        """The MLflow run training this job, so a recovery can mark it KILLED."""
        self.trial.set_user_attr("mlflow_run_id", run_id)


class GridQueue:
    def __init__(self, url: str, experiment: str):
        self.url, self.name = url, f"grid:{experiment}"
        with ask_lock(url):
            self.study = optuna.create_study(
                study_name=self.name, storage=open_storage(url), direction="minimize",
                load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=0))

    def lock(self):
        """Hold while deciding what to enqueue (and while creating the parent run)."""
        return ask_lock(self.url)

    def _by_hash(self) -> dict[str, list]:
        out: dict[str, list] = {}
        for t in self.study.get_trials(deepcopy=False):
            h = t.user_attrs.get("job.hash")
            if h is not None:
                out.setdefault(h, []).append(t)
        return out

    def fill(self, jobs: list[dict], skip: set[str], store=None) -> list[str]:
        """Enqueue each job (a dict with hash, name, config, axes, parent) unless it is in
        `skip` (finished earlier) or already waiting or running. Call under `lock()`."""
        recover(self.study, store)  # a dead worker's job is queued again once, here
        trials = self._by_hash()
        added = []
        for job in jobs:
            h = job["hash"]
            if h in skip:
                continue
            if any(t.state == TrialState.WAITING or (t.state == TrialState.RUNNING
                                                     and is_alive(t))
                   for t in trials.get(h, [])):
                continue
            self.study.enqueue_trial({}, user_attrs={f"job.{k}": v for k, v in job.items()})
            added.append(h)
        return added

    def take(self, store=None) -> Job | None:
        """Pop one waiting job and claim it; None when nothing waits."""
        with ask_lock(self.url):
            recover(self.study, store)
            if not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                return None
            trial = self.study.ask()
            claim(trial)
        a = trial.user_attrs
        if "job.hash" not in a:  # another machine popped the last job first: not a job
            trial.set_user_attr("no_job", True)
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        return Job(trial, a["job.hash"], a["job.name"], a["job.config"], a["job.axes"],
                   a.get("job.parent"), bool(a.get("job.force", False)))

    def finish(self, job: Job, value: float | None, reason: str = "") -> None:
        """COMPLETE with the test loss, or FAIL with the reason (diverged, failed probes,
        interrupted): a later command enqueues a failed job again."""
        if value is not None and reason == "":
            self.study.tell(job.trial, value)
            return
        job.trial.set_user_attr("fail_reason", reason[:2000])
        self.study.tell(job.trial, state=TrialState.FAIL)

    def running(self, hashes: set[str]) -> set[str]:
        """Which of these jobs are waiting or being trained (by a live worker) now."""
        busy = set()
        for h, trials in self._by_hash().items():
            if h in hashes and any(t.state == TrialState.WAITING or (
                    t.state == TrialState.RUNNING and is_alive(t)) for t in trials):
                busy.add(h)
        return busy

    def wait_a_little(self, seconds: float = 3.0) -> None:
        time.sleep(seconds)
