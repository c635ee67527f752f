"""The MLflow side: the only module that imports mlflow.

The embedded default store is SQLite at <results>/mlflow.db with artifacts under
<results>/mlartifacts; `tracking.uri` in the config or $MLFLOW_TRACKING_URI points it at a
tracking server instead. Runs are written through MlflowClient with explicit run ids (no
global "active run"), so parents, children and parallel workers never mix.

What a run shows in the MLflow UI:
- metrics in sections that the UI draws as chart groups (`metric_key`): `loss/` (nats/char
  and bits/char per split), `train/` (optimisation), `time/` (seconds, chars/s),
  `saturation/`, `units/`, `errflow/`, `study/` (a sweep's parent), and MLflow's own
  `system/` (CPU, memory, GPU);
- params: the config sections that apply to the run (a training run: data, model, train,
  probes; a parent: its grid and its own config), the whole config as `config.yaml`;
- its corpus as a dataset input (name, digest, split sizes, vocabulary size);
- the best checkpoint as a logged MLflow model (PyTorch flavour, with a signature);
- MLflow's source tags (git commit, branch, dirty, entry point) and a one-line description.

Tags every training run carries: variant, dataset, seed, config_hash, kind
("train" | "ablation" | "study" | "trial"), and failure_reason when it failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
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
# no usage reports from a research harness (and no network on many machines it runs on)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# the system-metrics monitor says "started" and "stopped" on every run, between our lines
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

# The section of each training quantity; the MLflow UI groups charts by the part before "/".
_SECTION = {
    **{f"{split}_{unit}": "loss" for split in ("train", "val", "test", "best_val")
       for unit in ("nats_per_char", "bits_per_char")},
    **dict.fromkeys(("lr", "grad_norm_preclip_mean", "grad_norm_preclip_max", "best_epoch",
                     "epochs_trained"), "train"),
    **dict.fromkeys(("epoch_seconds", "run_seconds", "probe_seconds", "train_chars_per_s",
                     "sweep_minutes"), "time"),
    **dict.fromkeys(("trials_complete", "trials_pruned", "trials_failed"), "study"),
}
# the probes' dotted names: sat.L1.f.left_mean -> saturation/L1_f_left_mean
_PROBE_SECTION = {"sat": "saturation", "unit": "units", "errflow": "errflow",
                  "errflow_init": "errflow", "importance": "study"}


def metric_key(name: str) -> str:
    """The MLflow name of a metric the harness computes: `<section>/<name>`."""
    if name in _SECTION:
        return f"{_SECTION[name]}/{name}"
    head, _, rest = name.partition(".")
    if head in _PROBE_SECTION and rest:
        rest = {"errflow_init": "init_", "importance": "importance_"}.get(head, "") + rest
        return f"{_PROBE_SECTION[head]}/{rest.replace('.', '_')}"
    return name


def plain_key(key: str) -> str:
    """The harness's own name of a loss, train or time metric read back from MLflow."""
    section, _, name = key.partition("/")
    return name if _SECTION.get(name) == section else key


class StoreError(RuntimeError):
    """A tracking store that is not there, or holds nothing to read."""


def tracking_uri(cfg: TrackingConfig) -> str:
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(cfg.results_dir).resolve() / 'mlflow.db')}"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=PROJECT_ROOT, text=True, capture_output=True,
                          check=True).stdout.strip()


def git_commit() -> str:
    """HEAD's sha, with "-dirty" when tracked files have changed; "unknown" outside git."""
    try:
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return _git("rev-parse", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags: what code made the run (commit, branch, whether the
    work tree had uncommitted changes, remote) and how it was started (entry point)."""
    entry = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", "multiprocessing.spawn"):
        entry = f"python -m {spec.name.removesuffix('.__main__')}"
    tags = {"mlflow.source.type": "LOCAL",
            "mlflow.source.name": " ".join([entry, *sys.argv[1:]])[:500]}
    commit = git_commit()
    if commit == "unknown":
        return tags
    tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    tags["mlflow.source.git.dirty"] = str(commit.endswith("-dirty")).lower()
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        tags["mlflow.source.git.branch"] = _git("rev-parse", "--abbrev-ref", "HEAD")
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        tags["mlflow.source.git.repoURL"] = _git("remote", "get-url", "origin")
    return tags


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
        self._client.log_inputs(self.run_id, datasets=[DatasetInput(
            ds, tags=[InputTag("mlflow.data.context", context)])])

    def log_model(self, model, checkpoint: Path, vocab_size: int, description: str) -> str:
        """The trained model as an MLflow model of this run, PyTorch flavour: `mlflow.pytorch
        .load_model(uri)` gives the CharLM (a pickle, so only load models you trust), and
        the model folder also holds the weights-only checkpoint (extra_files/best.pt) that
        study.inspect reads. Its signature: ids (T, B) int64 -> logits (T, B, V) float32.
        Returns the model's URI (models:/<id>)."""
        import mlflow.pytorch
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        sig = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1), "ids")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, vocab_size), "logits")]))
        pins = [f"torch=={__import__('torch').__version__.split('+')[0]}",
                f"mlflow=={mlflow.__version__}"]
        quiet = logging.getLogger("mlflow.pytorch")
        level, quiet.level = quiet.level, logging.ERROR  # its pickle warning is said above
        try:
            experiment = self._client.get_run(self.run_id).info.experiment_id
            with _fluent_target(self._client.tracking_uri, experiment):
                info = mlflow.pytorch.log_model(
                    model, name="model", signature=sig, run_id=self.run_id,
                    serialization_format="pickle", pip_requirements=pins,
                    extra_files=[str(checkpoint)],
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
        return sorted((m.step, m.value, m.timestamp)
                      for m in self._client.get_metric_history(run_id, metric_key(key)))

    def download(self, run_id: str, path: str, dst: str | Path) -> Path | None:
        """A run's artifact (file or folder) copied under dst; None if it has none."""
        try:
            return Path(self._client.download_artifacts(run_id, path, str(dst)))
        except (mlflow.exceptions.MlflowException, OSError):
            return None

    def model_checkpoint(self, model: str, dst: str | Path) -> tuple[Path, str]:
        """The weights-only checkpoint inside a logged model (`models:/<id>` or the id),
        downloaded under dst, and the id of the run that logged it."""
        model_id = model.removeprefix("models:/").strip("/")
        try:
            found = self._client.get_logged_model(model_id)
            folder = mlflow.artifacts.download_artifacts(
                artifact_uri=found.artifact_location, dst_path=str(dst),
                tracking_uri=self.uri)
        except mlflow.exceptions.MlflowException:
            raise RunNotFound(f"no logged model {model_id} in the MLflow store at "
                              f"{self.uri}") from None
        return Path(folder) / "extra_files" / "best.pt", found.source_run_id

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
