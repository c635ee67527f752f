"""Reading runs back for the report, through study.tracking's named read operations (the
only module that talks to MLflow): the one place analyses/ touches the store.

    runs = Runs.load(uri, experiments=["ablation", "sweeps"], run_ids=[], tags={})
    runs.train          # one row per training run: tags, params, final metrics
    runs.history(run_id, "val_nats_per_char")
    runs.csv(run_id, "probes/saturation.csv")
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from study.tracking import Reader

NUMERIC_PARAMS = ("model.num_layers", "model.hidden_size", "train.seed", "train.seq_len",
                  "train.epochs", "train.lr", "train.k1", "data.lag")
NOT_RESULTS = ("Default", "report")  # experiments left out unless asked for by name


def frame(records) -> pd.DataFrame:
    """RunRecords as one row each: run_id, run_name, experiment, status, start, end (ms),
    tag.*, param.* and the last value of each metric."""
    rows = []
    for r in records:
        row = {"run_id": r.run_id, "run_name": r.name, "experiment": r.experiment,
               "status": r.status, "start": r.start_ms, "end": r.end_ms}
        row.update({f"tag.{k}": v for k, v in r.tags.items()})
        row.update({f"param.{k}": v for k, v in r.params.items()})
        row.update(r.metrics)
        rows.append(row)
    df = pd.DataFrame(rows)
    for key in NUMERIC_PARAMS:
        col = f"param.{key}"
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


@dataclass
class Runs:
    reader: Reader
    all: pd.DataFrame  # every selected run
    experiments: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return self.reader.uri

    @classmethod
    def load(cls, uri: str, experiments: list[str] | None = None,
             run_ids: list[str] | None = None, tags: dict[str, str] | None = None) -> Runs:
        """The runs of these experiments (default: all but Default and report) whose tags
        match, plus the runs named in run_ids. Raises study.tracking.StoreError for a store
        that is not there and RunNotFound for a run id it does not hold."""
        reader = Reader(uri)
        present = reader.experiments()
        names = [n for n in experiments if n in present] if experiments else [
            n for n in present if n not in NOT_RESULTS]
        records = reader.runs(names, run_ids or None, tags or None)
        return cls(reader, frame(records), names)

    # selections -------------------------------------------------------------------------
    def of_kind(self, kind: str) -> pd.DataFrame:
        if self.all.empty or "tag.kind" not in self.all:
            return self.all.iloc[0:0]
        return self.all[self.all["tag.kind"] == kind]

    @property
    def train(self) -> pd.DataFrame:
        """Finished training runs with a test loss, on text corpora (the generated long-lag
        tasks' runs are `tasks`: their losses are not comparable with a corpus's)."""
        df = self._finished()
        return df[~_on_task(df)] if len(df) else df

    @property
    def tasks(self) -> pd.DataFrame:
        """Finished training runs on a generated long-lag task (study.tasks)."""
        df = self._finished()
        return df[_on_task(df)] if len(df) else df

    def _finished(self) -> pd.DataFrame:
        df = self.of_kind("train")
        if df.empty or "test_nats_per_char" not in df:
            return df.iloc[0:0]
        return df[(df.status == "FINISHED") & df.test_nats_per_char.notna()]

    @property
    def studies(self) -> pd.DataFrame:
        return self.of_kind("study")

    # per-run data ----------------------------------------------------------------------
    def history(self, run_id: str, key: str) -> pd.DataFrame:
        """Every logged value of one metric: columns step, value, timestamp (ms)."""
        return pd.DataFrame(self.reader.history(run_id, key),
                            columns=["step", "value", "timestamp"])

    def artifact(self, run_id: str, path: str) -> Path | None:
        """A local copy of a run's artifact, in a folder removed when the process ends."""
        if not hasattr(self, "_downloads"):
            self._downloads = tempfile.TemporaryDirectory(prefix="study-report-")
        dst = Path(self._downloads.name) / run_id
        dst.mkdir(exist_ok=True)
        return self.reader.download(run_id, path, dst)

    def csv(self, run_id: str, path: str) -> pd.DataFrame | None:
        p = self.artifact(run_id, path)
        return pd.read_csv(p) if p is not None and p.is_file() else None


def _on_task(df: pd.DataFrame) -> pd.Series:
    from study.tasks import TASKS

    if "tag.dataset" not in df:
        return pd.Series(False, index=df.index)
    return df["tag.dataset"].isin(TASKS)


def describe_run(row) -> str:
    layers, hidden = row.get("param.model.num_layers"), row.get("param.model.hidden_size")
    size = f"{int(layers)}×{int(hidden)}" if layers == layers and hidden == hidden \
        and layers is not None else "?"
    return f"{row.get('tag.variant', '?')} on {row.get('tag.dataset', '?')} ({size}, " \
           f"seed {row.get('tag.seed', '?')}, run {str(row['run_id'])[:8]})"
