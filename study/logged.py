"""A logged training run's model, back from MLflow: its checkpoint/best.pt artifact rebuilt
into a CharLM with its config and vocabulary (study.inspect, study.errors and the report
read runs through this)."""

from __future__ import annotations

import sys
import tempfile

from study import config as config_mod
from study import tracking
from study.data import Vocabulary
from study.model import CharLM
from study.train import BEST_KEYS, CheckpointError, load_checkpoint


class RunError(RuntimeError):
    """A run that cannot be inspected; the message says which and why."""


def load_run(run_id: str, tracking_uri: str | None = None):
    """(model, config, vocabulary, uri, run id) from a run's checkpoint/best.pt artifact;
    run_id may be a logged model's `models:/<id>`, read from the run that logged it (the
    run id returned). Raises RunError (or study.tracking.StoreError) with a message for
    the user."""
    uri = tracking_uri or tracking.tracking_uri(config_mod.TrackingConfig())
    reader = tracking.Reader(uri)  # refuses a local store that is not there
    try:
        if run_id.startswith("models:/"):
            run_id = reader.model_run(run_id)
        reader.run(run_id)
    except tracking.RunNotFound as e:
        raise RunError(str(e)) from None
    artifact = "checkpoint/best.pt"
    with tempfile.TemporaryDirectory() as tmp:  # the download goes when it is read
        path = reader.download(run_id, artifact, tmp)
        if path is None:
            raise RunError(f"run {run_id}: no {artifact} artifact; is the run finished, and "
                           "was it run with tracking.log_checkpoint?")
        try:
            ck = load_checkpoint(path, BEST_KEYS, name=f"{artifact} of run {run_id}",
                                 fix="retrain the run to get a usable checkpoint")
        except CheckpointError as e:
            raise RunError(str(e)) from None
    cfg = config_mod.from_dict({k: v for k, v in ck["config"].items()})
    model = CharLM(len(ck["vocab"]), cfg.model)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, cfg, Vocabulary(ck["vocab"]), uri, run_id


def load_run_or_say_why(run_id: str, tracking_uri: str | None):
    """load_run, or None after printing its one-line error."""
    try:
        return load_run(run_id, tracking_uri)
    except (RunError, tracking.StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def load_with_overrides(run_id: str, overrides: list[str], allowed: tuple[str, ...],
                        tracking_uri: str | None):
    """(model, config with `overrides` applied, corpus, uri, run id) of a logged run, to
    analyse it again; overrides must start with one of `allowed` (else SystemExit with
    the rule). None after printing one error line when the run, its checkpoint, an
    override or its corpus cannot be used (nothing is written)."""
    from pathlib import Path

    from study.data import DataError, load_corpus

    for item in overrides:
        if not item.startswith(allowed):
            raise SystemExit(f"error: --set {item}: only {', '.join(a + '*' for a in allowed)}"
                             " settings can change here")
    loaded = load_run_or_say_why(run_id, tracking_uri)
    if loaded is None:
        return None
    model, cfg, _, uri, run_id = loaded
    try:
        tree = config_mod.apply_overrides(config_mod.to_dict(cfg), overrides)
        cfg = config_mod.from_dict(tree, f"run {run_id}")
        corpus = load_corpus(cfg.data, Path(cfg.tracking.results_dir) / "cache")
    except (config_mod.ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    return model, cfg, corpus, uri, run_id
