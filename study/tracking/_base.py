"""What the tracking package shares: MLflow's environment defaults, the metric names
(`metric_key`, `plain_key`), the store's URI and existence check, and the source tags."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from study.config import TrackingConfig
from study.data import PROJECT_ROOT

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
    **dict.fromkeys(("lr", "grad_norm_preclip_mean", "grad_norm_preclip_max",
                     "grad_norm_preclip_p50", "grad_norm_preclip_p99", "clip_rate", "updates",
                     "best_epoch", "epochs_trained"), "train"),
    **{f"{split}_target_{unit}": "loss" for split in ("val", "best_val", "test")
       for unit in ("nats_per_char", "bits_per_char")},
    **dict.fromkeys(("val_targets", "test_targets"), "loss"),
    **dict.fromkeys(("epoch_seconds", "run_seconds", "probe_seconds", "train_chars_per_s",
                     "sweep_minutes"), "time"),
    **dict.fromkeys(("trials_complete", "trials_diverged", "trials_pruned", "trials_failed"),
                    "study"),
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


