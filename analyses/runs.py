"""Reading runs back from MLflow for the report: the one place analyses/ touches the store.

    runs = Runs.load(uri, experiments=["ablation", "sweeps"], run_ids=[], tags={})
    runs.train          # one row per training run: tags, params, final metrics
    runs.history(run_id, "val_nats_per_char")
    runs.csv(run_id, "probes/saturation.csv")
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# one progress bar per small CSV artifact drowns the report's own output
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

NUMERIC_PARAMS = ("model.num_layers", "model.hidden_size", "train.seed", "train.seq_len",
                  "train.epochs", "train.lr")


@dataclass
class Runs:
    client: MlflowClient
    uri: str
    all: pd.DataFrame  # every selected run
    experiments: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, uri: str, experiments: list[str] | None = None,
             run_ids: list[str] | None = None, tags: dict[str, str] | None = None) -> Runs:
        client = MlflowClient(uri)
        names = experiments or [e.name for e in client.search_experiments()
                                if e.name not in ("Default", "report")]
        exps = [e for e in (client.get_experiment_by_name(n) for n in names) if e is not None]
        runs = []
        if exps:
            flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())
            runs = client.search_runs([e.experiment_id for e in exps], filter_string=flt,
                                      max_results=50000)
        if run_ids:
            wanted = set(run_ids)
            runs = [r for r in runs if r.info.run_id in wanted] + [
                client.get_run(i) for i in wanted - {r.info.run_id for r in runs}]
        rows = []
        exp_names = {e.experiment_id: e.name for e in client.search_experiments()}
        for r in runs:
            row = {"run_id": r.info.run_id, "run_name": r.info.run_name,
                   "experiment": exp_names.get(r.info.experiment_id, r.info.experiment_id),
                   "status": r.info.status, "start": r.info.start_time,
                   "end": r.info.end_time}
            row.update({f"tag.{k}": v for k, v in r.data.tags.items()})
            row.update({f"param.{k}": v for k, v in r.data.params.items()})
            row.update(r.data.metrics)
            rows.append(row)
        df = pd.DataFrame(rows)
        for key in NUMERIC_PARAMS:
            col = f"param.{key}"
            if col in df:
                df[col] = pd.to_numeric(df[col], errors="coerce")
        return cls(client, uri, df, [e.name for e in exps])

    # selections -------------------------------------------------------------------------
    def of_kind(self, kind: str) -> pd.DataFrame:
        if self.all.empty or "tag.kind" not in self.all:
            return self.all.iloc[0:0]
        return self.all[self.all["tag.kind"] == kind]

    @property
    def train(self) -> pd.DataFrame:
        """Finished training runs with a test loss."""
        df = self.of_kind("train")
        if df.empty or "test_nats_per_char" not in df:
            return df.iloc[0:0]
        return df[(df.status == "FINISHED") & df.test_nats_per_char.notna()]

    @property
    def studies(self) -> pd.DataFrame:
        return self.of_kind("study")

    # per-run data ----------------------------------------------------------------------
    def history(self, run_id: str, key: str) -> pd.DataFrame:
        hist = self.client.get_metric_history(run_id, key)
        return pd.DataFrame([{"step": m.step, "value": m.value, "timestamp": m.timestamp}
                             for m in hist]).sort_values("step") if hist else pd.DataFrame(
            columns=["step", "value", "timestamp"])

    def artifact(self, run_id: str, path: str) -> Path | None:
        """A local copy of a run's artifact, in a folder removed when the process ends
        (MLflow's default would leave one temp folder per download)."""
        if not hasattr(self, "_downloads"):
            self._downloads = tempfile.TemporaryDirectory(prefix="study-report-")
        dst = Path(self._downloads.name) / run_id
        dst.mkdir(exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except (MlflowException, OSError):
            return None

    def csv(self, run_id: str, path: str) -> pd.DataFrame | None:
        p = self.artifact(run_id, path)
        return pd.read_csv(p) if p is not None and p.is_file() else None


def describe_run(row) -> str:
    layers, hidden = row.get("param.model.num_layers"), row.get("param.model.hidden_size")
    size = f"{int(layers)}×{int(hidden)}" if layers == layers and hidden == hidden \
        and layers is not None else "?"
    return f"{row.get('tag.variant', '?')} on {row.get('tag.dataset', '?')} ({size}, " \
           f"seed {row.get('tag.seed', '?')}, run {str(row['run_id'])[:8]})"


def nats_to_bits(x: float) -> float:
    return x / math.log(2)
