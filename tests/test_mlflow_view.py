"""What a researcher sees in MLflow, read back through the client from the smoke ablation:
params per run kind, metrics in chart sections, the corpus as a dataset input, the logged
model, system metrics, source tags, names and notes."""

import json
import re
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from study import inspect
from study.config import TrackingConfig, from_dict
from study.data import load_corpus
from study.model import CharLM
from study.tracking import metric_key, plain_key, tracking_uri
from study.train import BEST_KEYS, evaluate, load_checkpoint

SECTIONS = {"loss", "train", "time", "saturation", "units", "errflow", "errors", "system"}


def runs_of(smoke: Path):
    uri = tracking_uri(TrackingConfig(results_dir=str(smoke)))
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags["kind"] == "ablation")
    children = [r for r in runs if r.data.tags["kind"] == "train"]
    return client, exp, parent, children, uri


def test_the_store_lists_only_the_harness_experiments_each_with_a_note(smoke):
    client, exp, *_ = runs_of(smoke)
    assert [e.name for e in client.search_experiments()] == ["smoke"]  # no empty Default
    assert "nats/char" in exp.tags["mlflow.note.content"]


def test_params_are_the_config_that_applies_to_each_run_kind(smoke):
    _, _, parent, children, _ = runs_of(smoke)
    for c in children:
        sections = {k.split(".")[0] for k in c.data.params}
        assert sections == {"data", "model", "train", "probes"}, sections
        # what trained it, beside the config (study.engine.paths): here the CPU's C kernels
        assert c.data.params["train.trained_with"] == "engine (fused C kernels)"
        assert c.data.params["train.precision_used"] == "fp32"
    p = parent.data.params
    assert {k.split(".")[0] for k in p} == {"ablation", "data", "model", "train", "probes"}
    # the grid, not one of its values
    assert p["ablation.variants"] == "['peephole', 'lstm', 'gru']"
    assert p["ablation.datasets"] == "['warpeace', 'linux']" and p["ablation.runs"] == "6"
    assert not {"model.cell", "data.corpus", "train.seed"} & set(p)


def test_metrics_sit_in_sections_and_none_is_an_identifier(smoke):
    client, _, _, children, _ = runs_of(smoke)
    for c in children:
        keys = set(c.data.metrics)
        assert {k.split("/")[0] for k in keys} <= SECTIONS and all("/" in k for k in keys)
        assert not [k for k in keys if re.search(r"_(layer|unit)$", k)]
        assert "units/line_position_score" in keys
        assert c.data.tags["unit.line_position"].startswith("layer ")  # which unit: a tag
        # system metrics were sampled while training (smoke: every second)
        assert "system/cpu_utilization_percentage" in keys
        # per-epoch curves are steps of epochs; nothing is logged against q any more
        steps = {m.step for m in client.get_metric_history(c.info.run_id, "loss/val_nats_per_char")}
        assert steps == {1, 2}


def test_metric_names_round_trip():
    for name in ("test_nats_per_char", "val_bits_per_char", "lr", "epoch_seconds"):
        assert plain_key(metric_key(name)) == name
    assert metric_key("sat.L2.f.left_mean") == "saturation/L2_f_left_mean"
    assert metric_key("unit.in_quotes.score") == "units/in_quotes_score"
    assert metric_key("errflow_init.c.L1.log_decay_per_step") == \
        "errflow/init_c_L1_log_decay_per_step"
    assert plain_key("system/cpu_utilization_percentage") == "system/cpu_utilization_percentage"


def test_each_run_logs_its_corpus_as_a_dataset_with_the_corpus_checksum(smoke):
    _, _, _, children, _ = runs_of(smoke)
    cfg = from_dict({"data": {"max_chars": 20000}})
    for c in children:
        [inp] = c.inputs.dataset_inputs
        corpus = load_corpus(from_dict({"data": {"corpus": c.data.tags["dataset"],
                                                 "max_chars": cfg.data.max_chars}}).data)
        profile = json.loads(inp.dataset.profile)
        assert inp.dataset.name == corpus.name
        # MLflow caps a digest at 36 characters: the sha256's first 36 digits, whole in the
        # profile
        assert inp.dataset.digest == corpus.sha256[:36]
        assert profile["sha256"] == corpus.sha256 == c.data.tags["data_sha256"]
        assert profile["vocab_size"] == corpus.vocab_size
        assert profile["train_chars"] == corpus.splits["train"].numel()


def test_the_logged_model_loads_and_scores_as_its_checkpoint(smoke):
    client, _, _, children, uri = runs_of(smoke)
    c = next(r for r in children if r.data.tags["variant"] == "peephole")
    [out] = c.outputs.model_outputs
    model_uri = f"models:/{out.model_id}"
    mlflow.set_tracking_uri(uri)
    try:
        logged = mlflow.pytorch.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    assert isinstance(logged, CharLM)
    ck = load_checkpoint(Path(client.download_artifacts(c.info.run_id, "checkpoint/best.pt")),
                         BEST_KEYS)
    cfg = from_dict(ck["config"])
    model = CharLM(len(ck["vocab"]), cfg.model)
    model.load_state_dict(ck["model"])
    corpus = load_corpus(cfg.data)
    ids = corpus.splits["val"]
    want = evaluate(model, ids, 4, 100, torch.device("cpu"))
    assert evaluate(logged, ids, 4, 100, torch.device("cpu")) == pytest.approx(want, abs=1e-6)
    # study.inspect reads the same weights from the model's own copy of the checkpoint
    loaded, _, _, _, run_id = inspect.load_run(model_uri, uri)
    assert run_id == c.info.run_id
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_runs_read_in_a_legend_and_carry_a_note_and_the_source(smoke):
    _, _, parent, children, _ = runs_of(smoke)
    assert {c.info.run_name for c in children} == {
        f"{v} · {d} · s0" for v in ("peephole", "lstm", "gru") for d in ("warpeace", "linux")}
    for r in [parent, *children]:
        t = r.data.tags
        assert len(t["mlflow.note.content"]) > 40
        assert re.fullmatch(r"[0-9a-f]{40}", t["mlflow.source.git.commit"])
        assert t["mlflow.source.git.dirty"] in ("true", "false")
        assert t["mlflow.source.type"] == "LOCAL" and t["mlflow.source.name"]  # (pytest here)


def test_a_store_from_before_the_sections_still_reads(tmp_path):
    from study.tracking import Reader

    uri = f"sqlite:///{tmp_path / 'old.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("old"))
    for epoch, loss in ((1, 2.0), (2, 1.5)):
        client.log_metric(run.info.run_id, "val_nats_per_char", loss, step=epoch)
    reader = Reader(uri)
    assert [v for _, v, _ in reader.history(run.info.run_id, "val_nats_per_char")] == [2.0, 1.5]
    assert reader.run(run.info.run_id).metrics == {"val_nats_per_char": 1.5}


def test_a_dataset_logged_by_two_runs_at_once_is_linked_not_lost():
    """Two workers that log the same new corpus at once race to insert it; the loser's
    store refuses the duplicate key. log_dataset then links the existing dataset instead
    of failing the run; any other error still propagates."""
    import mlflow

    from study.tracking.store import RunTracker

    class Racing:
        def __init__(self, error):
            self.calls, self.error = 0, error

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            if self.calls == 1:
                raise mlflow.exceptions.MlflowException(self.error)

    lost = Racing('(psycopg.errors.UniqueViolation) duplicate key value violates unique '
                  'constraint "dataset_pk"')
    RunTracker(lost, "r").log_dataset("warpeace", "ab" * 32, "/x", {"chars": 1})
    assert lost.calls == 2
    other = Racing("permission denied")
    with pytest.raises(mlflow.exceptions.MlflowException, match="permission denied"):
        RunTracker(other, "r").log_dataset("warpeace", "ab" * 32, "/x", {"chars": 1})
    assert other.calls == 1
