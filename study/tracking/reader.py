"""Reading runs back (analyses/, study.inspect, study.ui): Reader and RunRecord."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from study.tracking._base import StoreError, metric_key, plain_key, require_store


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
    # the last value of each; loss, train and time metrics by the harness's names
    metrics: dict[str, float] = field(default_factory=dict)


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

    def metric_names(self, experiment: str) -> set[str]:
        """The metric names an experiment's runs logged, as logged (with their sections)."""
        exp = self._client.get_experiment_by_name(experiment)
        if exp is None:
            return set()
        runs = self._client.search_runs([exp.experiment_id], max_results=50000)
        return {k for r in runs for k in r.data.metrics}

    def run(self, run_id: str) -> RunRecord:
        """One run by id; RunNotFound names the store when it is not there."""
        names = {e.experiment_id: e.name for e in self._client.search_experiments()}
        return self._record(self._get(run_id), names)

    def history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        """Every (step, value, timestamp in ms) logged for a metric (the harness's name or
        the logged one), by step."""
        found = self._client.get_metric_history(run_id, metric_key(key))
        if not found and metric_key(key) != key:  # a store written before the sections
            found = self._client.get_metric_history(run_id, key)
        return sorted((m.step, m.value, m.timestamp) for m in found)

    def download(self, run_id: str, path: str, dst: str | Path) -> Path | None:
        """A run's artifact (file or folder) copied under dst; None if it has none."""
        try:
            return Path(self._client.download_artifacts(run_id, path, str(dst)))
        except (mlflow.exceptions.MlflowException, OSError):
            return None

    def model_run(self, model: str) -> str:
        """The id of the run that logged a model (`models:/<id>` or the id)."""
        model_id = model.removeprefix("models:/").strip("/")
        try:
            return self._client.get_logged_model(model_id).source_run_id
        except mlflow.exceptions.MlflowException:
            raise RunNotFound(f"no logged model {model_id} in the MLflow store at "
                              f"{self.uri}") from None

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
                         dict(r.data.params),
                         {plain_key(k): v for k, v in r.data.metrics.items()})
