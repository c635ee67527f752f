"""The MLflow side: the only module that imports mlflow.

The embedded default store is SQLite at <results>/mlflow.db with artifacts under
<results>/mlartifacts; `tracking.uri` in the config or $MLFLOW_TRACKING_URI points it at a
tracking server instead. Runs are written through MlflowClient with explicit run ids (no
global "active run"), so parents, children and parallel workers never mix.

Tags every training run carries: variant, dataset, seed, config_hash, git_commit, kind
("train" | "ablation" | "study" | "trial"), and failure_reason when it failed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from study.config import Config, TrackingConfig, flatten, to_dict
from study.data import PROJECT_ROOT
from study.files import file_lock

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
# one progress bar per small artifact download drowns a command's own output
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class StoreError(RuntimeError):
    """A tracking store that is not there, or holds nothing to read."""


def tracking_uri(cfg: TrackingConfig) -> str:
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(cfg.results_dir).resolve() / 'mlflow.db')}"


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, text=True, capture_output=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _local_path(uri: str) -> Path | None:
    """The file or folder behind a local store URI (sqlite:///PATH, file:PATH, a bare path)."""
    if uri.startswith("sqlite:///"):
        return None if ":memory:" in uri else Path(uri[len("sqlite:///"):])
    if uri.startswith("file:"):
        return Path(uri[len("file:"):].removeprefix("//"))
    if "://" not in uri:
        return Path(uri)
    return None


def require_store(uri: str) -> None:
    """Refuse a local store that does not exist, before MLflow would create an empty one."""
    path = _local_path(uri)
    if path is not None and not path.exists():
        raise StoreError(f"no MLflow store at {uri} ({path} does not exist); check "
                         "--tracking-uri or $MLFLOW_TRACKING_URI (the default store is "
                         "results/mlflow.db under the folder you ran study.run in)")


@contextlib.contextmanager
def _creation_lock(uri: str):
    """Serialise the first open of a local SQLite store between processes: MLflow creates
    and migrates its schema on first use, and two processes doing it at once crash
    ("duplicate column name")."""
    path = _local_path(uri) if uri.startswith("sqlite:///") else None
    with file_lock(None if path is None else f"{path}.lock"):
        yield


class Store:
    """One experiment in one tracking store. Artifacts of a local store go next to it
    (<folder of mlflow.db>/mlartifacts/<experiment>), wherever the command runs."""

    def __init__(self, cfg: TrackingConfig):
        self.uri = tracking_uri(cfg)
        local = _local_path(self.uri)
        artifacts = None
        if local is not None:
            root = local.parent if self.uri.startswith("sqlite:") else local
            artifacts = (root.resolve() / "mlartifacts" / cfg.experiment).as_uri()
        with _creation_lock(self.uri):
            # No mlflow.set_tracking_uri: it exports MLFLOW_TRACKING_URI to every subprocess.
            self._client = MlflowClient(tracking_uri=self.uri)
            exp = self._client.get_experiment_by_name(cfg.experiment)
            if exp is None:
                try:
                    self.experiment_id = self._client.create_experiment(cfg.experiment,
                                                                        artifacts)
                except mlflow.exceptions.MlflowException:  # another machine created it first
                    exp = self._client.get_experiment_by_name(cfg.experiment)
            if exp is not None:
                self.experiment_id = exp.experiment_id
        self.name = cfg.experiment

    def find(self, **tags) -> list[RunRecord]:
        """Runs of this experiment whose tags match, newest first."""
        flt = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        runs = self._client.search_runs([self.experiment_id], filter_string=flt,
                                        order_by=["attributes.start_time DESC"],
                                        max_results=1000)
        return [Reader._record(r, {self.experiment_id: self.name}) for r in runs]

    def completed(self, config_hash: str) -> RunRecord | None:
        """The newest FINISHED training run of a configuration."""
        runs = [r for r in self.find(config_hash=config_hash, kind="train")
                if r.status == FINISHED]
        return runs[0] if runs else None

    def latest(self, config_hash: str, kind: str = "train") -> RunRecord | None:
        """The newest run of a configuration, whatever its status."""
        runs = self.find(config_hash=config_hash, kind=kind)
        return runs[0] if runs else None

    def unfinished(self, config_hash: str, kind: str = "train") -> str | None:
        """The id of the newest run of a configuration that did not finish."""
        runs = [r for r in self.find(config_hash=config_hash, kind=kind)
                if r.status != FINISHED]
        return runs[0].run_id if runs else None

    def has_run(self, run_id: str) -> bool:
        """Whether this experiment holds the run."""
        try:
            return self._client.get_run(run_id).info.experiment_id == self.experiment_id
        except mlflow.exceptions.MlflowException:
            return False

    def mark_killed(self, run_id: str, reason: str) -> None:
        """End a run whose process is gone: KILLED, with the reason."""
        self._client.set_tag(run_id, "failure_reason", reason[:5000])
        self._client.set_terminated(run_id, KILLED)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self._client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def start(self, name: str, tags: dict[str, Any], parent_id: str | None = None) -> RunTracker:
        """A new run, tagged (git commit added), a child of parent_id if given."""
        tags = {k: str(v) for k, v in tags.items()}
        tags["git_commit"] = git_commit()
        if parent_id is not None:
            tags["mlflow.parentRunId"] = parent_id
        run = self._client.create_run(self.experiment_id, run_name=name, tags=tags)
        return RunTracker(self._client, run.info.run_id)

    def resume(self, run_id: str) -> RunTracker:
        """An existing run taken up again (RUNNING once more)."""
        self._client.update_run(run_id, status=RUNNING)
        return RunTracker(self._client, run_id)


class RunTracker:
    """One MLflow run, by id, as study.runner writes it. Made by Store.start/resume."""

    def __init__(self, client: MlflowClient, run_id: str):
        self._client, self.run_id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        existing = self._client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # a resumed run has them
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def log_config(self, cfg: Config) -> None:
        import yaml

        self.log_params(flatten(to_dict(cfg)))
        self._client.log_text(self.run_id, yaml.safe_dump(to_dict(cfg), sort_keys=False),
                             "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_series(self, points: list[tuple[str, float, int]]) -> None:
        """Many (key, value, step) points in few requests."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v, step in points]
        for i in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifacts(self, folder: str | Path, name: str | None = None) -> None:
        self._client.log_artifacts(self.run_id, str(folder), name)

    def log_text(self, text: str, name: str) -> None:
        self._client.log_text(self.run_id, text, name)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def tags(self) -> dict[str, str]:
        return dict(self._client.get_run(self.run_id).data.tags)

    def end(self, status: str = FINISHED, reason: str = "") -> None:
        if reason:
            self.set_tags({"failure_reason": reason[:5000]})
        elif "failure_reason" in self._client.get_run(self.run_id).data.tags:
            # a resumed run that finished is no longer "interrupted"
            self._client.delete_tag(self.run_id, "failure_reason")
        self._client.set_terminated(self.run_id, status=status)

    def end_after(self, error: BaseException, resume_hint: str = "") -> None:
        """End the run for an exception: KILLED for Ctrl-C, FAILED for anything else."""
        if isinstance(error, KeyboardInterrupt):
            self.end("KILLED", "interrupted" + (f"; {resume_hint}" if resume_hint else ""))
        else:
            self.end("FAILED", f"{type(error).__name__}: {error}")


def open_run(uri: str, run_id: str) -> RunTracker:
    """An existing run to add to (study.inspect), its status left as it is."""
    require_store(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise RunNotFound(f"no run {run_id} in the MLflow store at {uri}") from None
    return RunTracker(client, run_id)


# ---------------------------------------------------------------------------------------
# reading runs back (analyses/, study.inspect)


class RunNotFound(StoreError):
    """A run id the store does not hold."""


@dataclass
class RunRecord:
    """One run as plain data: what the report and the inspector read."""

    run_id: str
    name: str
    experiment: str
    status: str  # FINISHED | FAILED | KILLED | RUNNING
    start_ms: int | None
    end_ms: int | None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the last value of each


class Reader:
    """Runs of an existing store, read by name: experiments, runs, metric histories and
    artifacts. Refuses a local store that is not there (StoreError)."""

    def __init__(self, uri: str):
        require_store(uri)  # before the client: it would create an empty store at a typo
        self.uri = uri
        self._client = MlflowClient(tracking_uri=uri)

    def experiments(self) -> list[str]:
        return [e.name for e in self._client.search_experiments()]

    def experiment_ids(self) -> dict[str, str]:
        """{name: id} of the store's active experiments, oldest first."""
        exps = self._client.search_experiments(order_by=["creation_time ASC"])
        return {e.name: e.experiment_id for e in exps}

    def runs(self, experiments: list[str] | None = None, run_ids: list[str] | None = None,
             tags: dict[str, str] | None = None) -> list[RunRecord]:
        """The runs of these experiments (default: all) whose tags match, plus the runs
        named in run_ids (wherever they are)."""
        names = {e.experiment_id: e.name for e in self._client.search_experiments()}
        ids = [i for i, n in names.items() if experiments is None or n in experiments]
        found = []
        if ids:
            flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())
            found = self._client.search_runs(ids, filter_string=flt, max_results=50000)
        if run_ids:
            wanted = set(run_ids)
            have = {r.info.run_id for r in found}
            found = [r for r in found if r.info.run_id in wanted] + [
                self._get(i) for i in run_ids if i not in have]
        return [self._record(r, names) for r in found]

    def run(self, run_id: str) -> RunRecord:
        """One run by id; RunNotFound names the store when it is not there."""
        names = {e.experiment_id: e.name for e in self._client.search_experiments()}
        return self._record(self._get(run_id), names)

    def history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        """Every (step, value, timestamp in ms) logged for a metric, by step."""
        return sorted((m.step, m.value, m.timestamp)
                      for m in self._client.get_metric_history(run_id, key))

    def download(self, run_id: str, path: str, dst: str | Path) -> Path | None:
        """A run's artifact (file or folder) copied under dst; None if it has none."""
        try:
            return Path(self._client.download_artifacts(run_id, path, str(dst)))
        except (mlflow.exceptions.MlflowException, OSError):
            return None

    def _get(self, run_id: str):
        try:
            return self._client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            raise RunNotFound(f"no run {run_id} in the MLflow store at {self.uri}; check the "
                              "run id and --tracking-uri / $MLFLOW_TRACKING_URI") from None

    @staticmethod
    def _record(r, names: dict[str, str]) -> RunRecord:
        i = r.info
        return RunRecord(i.run_id, i.run_name, names.get(i.experiment_id, i.experiment_id),
                         i.status, i.start_time, i.end_time, dict(r.data.tags),
                         dict(r.data.params), dict(r.data.metrics))
