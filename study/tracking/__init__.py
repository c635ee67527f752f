"""The MLflow side: the only package that imports mlflow.

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

from study.tracking._base import (
    FAILED,
    FINISHED,
    KILLED,
    RUNNING,
    StoreError,
    git_commit,
    metric_key,
    plain_key,
    require_store,
    source_tags,
    tracking_uri,
)
from study.tracking.reader import Reader, RunNotFound, RunRecord
from study.tracking.store import RunTracker, Store, open_run

__all__ = ["FAILED", "FINISHED", "KILLED", "RUNNING", "Reader", "RunNotFound", "RunRecord",
           "RunTracker", "Store", "StoreError", "git_commit", "metric_key", "open_run",
           "plain_key", "require_store", "source_tags", "tracking_uri"]
