"""Generated long-lag tasks wired into the harness: the corpus loader, the target-character
loss (study.targets), an ablation over data.lag (one corpus per lag) logged to MLflow and
read back, and bad settings refused."""

import math

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from analyses import longlag
from analyses.runs import Runs
from study import run, tasks
from study.config import TrackingConfig, from_dict
from study.data import DataError, load_corpus
from study.longrange import context_chars
from study.model import CharLM
from study.targets import scorable, success_threshold, target_nats
from study.tracking import tracking_uri


def test_a_task_named_as_corpus_is_generated_once_and_deterministic(tmp_path):
    cfg = from_dict({"data": {"corpus": "temporal_order", "lag": 12, "seed": 3,
                              "max_chars": 5000}}).data
    a = load_corpus(cfg, tmp_path / "a")
    b = load_corpus(cfg, tmp_path / "b")
    assert a.task == "temporal_order" and a.lag == 12 and a.name == "temporal_order"
    assert a.sha256 == b.sha256 and torch.equal(a.ids, b.ids)
    text = a.path.read_text()
    assert text == tasks.generate("temporal_order", lag=12, seed=3, chars=5000)
    assert {k: len(v) for k, v in a.splits.items()}["train"] == int(0.8 * len(a.ids))
    other = load_corpus(from_dict({"data": {"corpus": "temporal_order", "lag": 12, "seed": 4,
                                            "max_chars": 5000}}).data, tmp_path / "a")
    assert other.sha256 != a.sha256


def test_scorable_targets_are_those_whose_whole_line_the_stream_has_read():
    text = tasks.generate("temporal_order", lag=6, seed=0, chars=400)
    text = text[5:]  # the split starts mid-line
    B = 4
    keep = scorable(text, "temporal_order", B)
    mask = tasks.target_mask("temporal_order", text)
    seen = context_chars(len(text), B)
    assert keep.sum() > 0 and (keep <= mask).all()
    for i in np.flatnonzero(mask):
        start = text.rfind("\n", 0, i) + 1
        whole = text.rfind("\n", 0, i) >= 0 and i - start <= seen[i]
        assert keep[i] == whole, (i, start, seen[i])
    # the first stream's first, cut line is never scored
    assert not keep[: text.index("\n") + 1].any()


def test_target_loss_is_chance_for_a_model_that_predicts_uniformly(tmp_path):
    cfg = from_dict({"data": {"corpus": "embedded_reber", "lag": 8, "max_chars": 3000},
                     "model": {"hidden_size": 4, "num_layers": 1}})
    corpus = load_corpus(cfg.data, tmp_path)
    model = CharLM(corpus.vocab_size, cfg.model)
    for p in model.parameters():
        torch.nn.init.zeros_(p)  # every prediction uniform over the V characters
    nats, count = target_nats(model, corpus, "val", 4, 50, torch.device("cpu"))
    assert count > 5 and nats == pytest.approx(math.log(corpus.vocab_size))
    assert success_threshold("embedded_reber") == pytest.approx(0.25 * math.log(2))


def test_a_lag_ablation_trains_each_lag_on_its_own_corpus_and_logs_target_losses(tmp_path):
    cfg = {"name": "ll", "data": {"corpus": "temporal_order", "max_chars": 4000},
           "model": {"hidden_size": 8, "num_layers": 1},
           "train": {"batch_size": 4, "k1": 5, "seq_len": 10, "epochs": 2, "patience": None,
                     "sample_chars": 0},
           "probes": {"enabled": False},
           "tracking": {"experiment": "ll", "results_dir": str(tmp_path / "results"),
                        "log_checkpoint": False, "system_metrics_s": 0},
           "ablation": {"variants": ["lstm"], "grid": {"data.lag": [5, 20]}}}
    p = tmp_path / "ll.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert run.main([str(p), "--no-progress"]) == 0
    client = MlflowClient(tracking_uri(TrackingConfig(results_dir=str(tmp_path / "results"))))
    exp = client.get_experiment_by_name("ll")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'train'")
    assert len(runs) == 2
    by_lag = {int(r.data.params["data.lag"]): r for r in runs}
    assert sorted(by_lag) == [5, 20]
    assert by_lag[5].data.tags["data_sha256"] != by_lag[20].data.tags["data_sha256"]
    for lag, r in by_lag.items():
        m, t = r.data.metrics, r.data.tags
        assert t["task"] == "temporal_order" and t["task.lag"] == str(lag)
        assert float(t["task.chance_nats_per_char"]) == pytest.approx(math.log(4), abs=1e-4)
        assert t["task.learned"] in ("true", "false")
        assert m["loss/test_targets"] > 0 and m["loss/val_targets"] > 0
        assert 0 < m["loss/test_target_nats_per_char"] < 5
        assert m["loss/test_target_bits_per_char"] == pytest.approx(
            m["loss/test_target_nats_per_char"] / math.log(2))
        hist = client.get_metric_history(r.info.run_id, "loss/val_target_nats_per_char")
        assert [h.step for h in hist] == [1, 2]
        # the best checkpoint is the best epoch's model: the same target loss
        best = {h.step: h.value for h in hist}[int(m["train/best_epoch"])]
        assert m["loss/best_val_target_nats_per_char"] == pytest.approx(best, rel=1e-9)
    # the report: task runs stay out of the corpus tables, and get their own section
    runs = Runs.load(tracking_uri(TrackingConfig(results_dir=str(tmp_path / "results"))))
    assert runs.train.empty and len(runs.tasks) == 2
    o = longlag.outcomes(runs)
    assert sorted(o.lag) == [5, 20] and set(o.cell) == {"lstm"}
    assert list(o.learned) == list(o.test_target_nats_per_char < 0.25 * math.log(4))
    sec = longlag.build(runs, tmp_path / "report")
    assert sec.missing is None and len(sec.figures) == 1
    table = sec.tables["longlag_temporal_order"]
    assert list(table.columns) == ["cell", "lag 5 · k2 10", "lag 20 · k2 10"]


@pytest.mark.parametrize("data,needle", [
    ({"corpus": "adding_problem"}, "generated long-lag tasks: adding, temporal_order, "
                                   "embedded_reber"),
    ({"corpus": "embedded_reber", "lag": 3}, "data.lag = 3 is below embedded_reber's "
                                             "minimum lag 6"),
])
def test_bad_task_settings_are_refused_before_anything_runs(tmp_path, capsys, data, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"data": data, "tracking": {
        "results_dir": str(tmp_path / "results")}}))
    assert run.main([str(p), "--dry-run"]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "results" / "mlflow.db").exists()


def test_unknown_corpus_in_the_loader_names_the_tasks():
    cfg = from_dict({"data": {"corpus": "warpeace"}}).data
    import dataclasses

    with pytest.raises(DataError, match="temporal_order"):
        load_corpus(dataclasses.replace(cfg, corpus="nope"))
