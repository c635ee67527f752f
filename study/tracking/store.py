"""Writing runs: Store (one experiment: find, start, resume, mark) and RunTracker (one
run: params, metrics, dataset, model, artifacts, system metrics, its end)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from study.config import Config, TrackingConfig, flatten, to_dict
from study.files import file_lock
from study.tracking._base import (
    FINISHED,
    KILLED,
    RUNNING,
    _local_path,
    metric_key,
    require_store,
    source_tags,
    tracking_uri,
)
from study.tracking.reader import Reader, RunNotFound, RunRecord


@contextlib.contextmanager
def _fluent_target(uri: str, experiment_id: str):
    """MLflow's global tracking URI and experiment set for the block (log_model has no
    client form; without the experiment it logs the model into "Default"), then put back:
    set for good, they would leak into every subprocess through the environment."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    exp_before = os.environ.get("MLFLOW_EXPERIMENT_ID")
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        if exp_before is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = exp_before
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        mlflow.set_tracking_uri(before)


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

    def __init__(self, cfg: TrackingConfig, description: str = ""):
        """Open (or create, with `description` as its note) the experiment cfg.experiment.
        MLflow's empty "Default" experiment is removed from the list: nothing is logged
        there, and a new user would open it first."""
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
            elif description:
                self._client.set_experiment_tag(self.experiment_id, "mlflow.note.content",
                                                description)
            self._hide_empty_default()
        self.name = cfg.experiment

    def _hide_empty_default(self) -> None:
        default = self._client.get_experiment("0") if self.uri.startswith("sqlite:") else None
        if (default is not None and default.name == "Default"
                and default.lifecycle_stage == "active"
                and not self._client.search_runs(["0"], max_results=1,
                                                 run_view_type=mlflow.entities.ViewType.ALL)):
            self._client.delete_experiment("0")

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

    def start(self, name: str, tags: dict[str, Any], parent_id: str | None = None,
              description: str = "") -> RunTracker:
        """A new run, tagged (MLflow's source tags added; `description` as its note), a
        child of parent_id if given."""
        tags = {**source_tags(), **{k: str(v) for k, v in tags.items()}}
        if parent_id is not None:
            tags["mlflow.parentRunId"] = parent_id
        if description:
            tags["mlflow.note.content"] = description
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
        self._monitor = None

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        existing = self._client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # a resumed run has them
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def log_config(self, cfg: Config, sections: tuple[str, ...] | None = None,
                   extra: dict[str, Any] | None = None, drop: set[str] = frozenset()) -> None:
        """The config's keys in `sections` (default: all) as params, less the dotted keys
        in `drop` (those a grid or a sweep sets per run), plus `extra`; the whole config
        as config.yaml."""
        import yaml

        tree = to_dict(cfg)
        if sections is not None:
            tree = {k: v for k, v in tree.items() if k in sections}
        params = {k: v for k, v in flatten(tree).items() if k not in drop}
        self.log_params({**params, **(extra or {})})
        self._client.log_text(self.run_id, yaml.safe_dump(to_dict(cfg), sort_keys=False),
                             "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Metrics by the harness's names, logged under their sections (metric_key)."""
        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_dataset(self, name: str, sha256: str, source: str, profile: dict[str, Any],
                    context: str = "training") -> None:
        """The corpus as the run's dataset input. MLflow caps a digest at 36 characters
        (MAX_DATASET_DIGEST_SIZE), so the digest is the sha256's first 36 hex digits and
        the whole sha256 is in the profile (and the run's data_sha256 tag)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=sha256[:36], source_type="local", source=json.dumps(
            {"uri": source}), profile=json.dumps({"sha256": sha256, **profile}))
        for attempt in range(5):
            try:
                self._client.log_inputs(self.run_id, datasets=[DatasetInput(
                    ds, tags=[InputTag("mlflow.data.context", context)])])
                return
            except mlflow.exceptions.MlflowException as e:
                # Two runs that log the same new dataset at once both insert it; the store's
                # unique key refuses the second ("dataset_pk" on PostgreSQL, "UNIQUE
                # constraint failed: datasets" on SQLite). The dataset exists now, so the
                # same call again only links it to this run.
                text = str(e)
                if attempt == 4 or not ("dataset_pk" in text or "datasets." in text):
                    raise
                time.sleep(0.2 * (attempt + 1))

    def log_model(self, model, vocab_size: int, description: str) -> str:
        """The trained model as an MLflow model of this run, PyTorch flavour: `mlflow.pytorch
        .load_model(uri)` gives the CharLM (a pickle, so only load models you trust;
        study.inspect, given the model's URI, reads its run's weights-only checkpoint
        instead). Its signature: ids (T, B) int64 -> logits (T, B, V) float32. Returns the
        model's URI (models:/<id>)."""
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        sig = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1), "ids")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, vocab_size), "logits")]))
        pins = [f"torch=={torch.__version__.split('+')[0]}",
                f"mlflow=={mlflow.__version__}"]
        quiet = logging.getLogger("mlflow.pytorch")
        level, quiet.level = quiet.level, logging.ERROR  # its pickle warning is said above
        try:
            experiment = self._client.get_run(self.run_id).info.experiment_id
            with _fluent_target(self._client.tracking_uri, experiment):
                info = mlflow.pytorch.log_model(
                    model, name="model", signature=sig, run_id=self.run_id,
                    serialization_format="pickle", pip_requirements=pins,
                    tags={"mlflow.note.content": description})
        finally:
            quiet.level = level
        return info.model_uri

    def watch_system(self, interval_s: float) -> None:
        """Sample MLflow's system metrics (system/cpu_utilization_percentage, memory, GPU
        where present) every interval_s seconds until the run ends; 0 turns them off."""
        if interval_s <= 0 or self._monitor is not None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s,
                                             resume_logging=True,
                                             tracking_uri=self._client.tracking_uri)
        self._monitor.start()

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
        if self._monitor is not None:  # its last samples go in before the run closes
            self._monitor.finish()
            self._monitor = None
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


