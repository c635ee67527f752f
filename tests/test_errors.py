"""Karpathy15's error analysis end to end: what a smoke run with probes.errors logs (read
back through MlflowClient), `python -m study.errors` and `python -m study.ngram` on logged
runs (and their refusals, which write nothing), the n-gram cache, the closing-brace table,
and the training dynamics' pieces (per-epoch checkpoints, the JS divergence)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from study import config as config_mod
from study import errors, run
from study.breakdown import CATEGORIES
from study.config import DataConfig, ModelConfig
from study.data import load_corpus
from study.dynamics import js_divergence, model_distributions
from study.longrange import per_char_nats
from study.model import CharLM
from study.train import snapshot_updates
from tests.conftest import SMOKE


def _client(results):
    return MlflowClient(f"sqlite:///{results}/mlflow.db")


def _train_runs(client):
    exp = client.get_experiment_by_name("smoke")
    return client.search_runs([exp.experiment_id], "tags.kind = 'train'")


def _all_runs(client):
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture
def store(smoke, tmp_path):
    """A copy of the smoke store (runs, artifacts, caches) that a test may change."""
    dst = tmp_path / "smoke"
    shutil.copytree(smoke, dst)
    db = dst / "mlflow.db"  # artifact locations are absolute paths into the original
    return dst, f"sqlite:///{db}"


def test_smoke_runs_log_the_breakdown(smoke):
    client = _client(smoke)
    runs = _train_runs(client)
    assert len(runs) == 6
    for r in runs:
        m = r.data.metrics
        fracs = [m[f"errors/frac_{c}"] for c in CATEGORIES]
        assert math.isclose(sum(fracs), 1.0, abs_tol=1e-9), fracs  # the categories partition
        assert 0 <= m["errors/error_rate"] <= 1
        assert m["errors/errors"] == round(m["errors/error_rate"] * m["errors/scored_chars"])
        names = {a.path for a in client.list_artifacts(r.info.run_id, "errors")}
        assert {"errors/breakdown.csv", "errors/breakdown.png", "errors/errors.html"} <= names
        csv = pd.read_csv(client.download_artifacts(r.info.run_id, "errors/breakdown.csv"))
        assert list(csv.category) == list(CATEGORIES)
        assert csv.errors.sum() == m["errors/errors"]
        page = Path(client.download_artifacts(r.info.run_id, "errors/errors.html")).read_text(
            encoding="utf-8")
        assert "<script" not in page and "p = " in page


def test_errors_command_relogs_and_refuses_bad_input(store, capsys):
    results, uri = store
    client = MlflowClient(uri)
    target = _train_runs(client)[0]
    before = len(_all_runs(client))
    assert errors.main([target.info.run_id, "--tracking-uri", uri, "--no-progress"]) == 0
    assert "frac_of_errors" in capsys.readouterr().out
    history = client.get_metric_history(target.info.run_id, "errors/error_rate")
    assert len(history) == 2  # logged after training and again now
    # refusals: one error line, exit 2, no new run and nothing logged to the run
    assert errors.main(["0" * 32, "--tracking-uri", uri]) == 2
    assert "no run" in capsys.readouterr().err
    assert errors.main([target.info.run_id, "--tracking-uri", uri,
                        "--set", "probes.errors_ngram_order=40"]) == 2
    assert "errors_ngram_order = 40" in capsys.readouterr().err
    parent = client.get_run(target.data.tags["mlflow.parentRunId"])  # has no checkpoint
    assert errors.main([parent.info.run_id, "--tracking-uri", uri]) == 2
    assert "no checkpoint/best.pt" in capsys.readouterr().err
    assert len(_all_runs(client)) == before
    assert len(client.get_metric_history(target.info.run_id, "errors/error_rate")) == 2


def test_a_failing_analysis_fails_the_run_until_it_succeeds(store, monkeypatch, capsys):
    results, uri = store
    client = MlflowClient(uri)
    rid = _train_runs(client)[0].info.run_id

    def broken(*args, **kwargs):
        raise RuntimeError("the breakdown broke")

    monkeypatch.setattr(errors.breakdown, "classify", broken)
    assert errors.main([rid, "--tracking-uri", uri, "--no-progress"]) == 1
    r = client.get_run(rid)
    assert r.info.status == "FAILED"
    assert "the breakdown broke" in r.data.tags["failure_reason"]
    monkeypatch.undo()
    assert errors.main([rid, "--tracking-uri", uri, "--no-progress"]) == 0
    assert client.get_run(rid).info.status == "FINISHED"


def test_an_errors_failure_after_training_fails_the_run(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("no breakdown today")

    monkeypatch.setattr(errors, "analyse", broken)
    rc = run.main([SMOKE, "--set", f"tracking.results_dir={tmp_path}", "--no-progress",
                   "--set", "ablation.variants=[lstm]", "--set", "ablation.datasets=[linux]",
                   "--set", "train.epochs=1", "--set", "probes.error_flow=false"])
    assert rc == 1
    (r,) = _train_runs(_client(tmp_path))
    assert r.info.status == "FAILED"
    assert "errors: ValueError: no breakdown today" in r.data.tags["failure_reason"]


def test_keep_all_checkpoints_gives_training_dynamics(tmp_path):
    overrides = [f"tracking.results_dir={tmp_path}", "ablation.variants=[gru]",
                 "ablation.datasets=[warpeace]", "train.keep_checkpoints=all",
                 "probes.error_flow=false"]
    cfg = config_mod.load(SMOKE, overrides)
    assert config_mod.run_hash(cfg) == config_mod.run_hash(config_mod.load(SMOKE, overrides[:2]))
    assert run.main([SMOKE, "--no-progress", *sum((["--set", o] for o in overrides), [])]) == 0
    client = _client(tmp_path)
    (r,) = _train_runs(client)
    per_epoch = int(r.data.metrics["train/updates"])
    steps = snapshot_updates(per_epoch, 2)
    assert steps[:3] == [0, 1, 2] and steps[-2:] == [per_epoch, 2 * per_epoch]
    kept = sorted(a.path for a in client.list_artifacts(r.info.run_id,
                                                        "checkpoint/snapshots"))
    assert kept == [f"checkpoint/snapshots/update_{u:08d}.pt" for u in steps]
    js = client.get_metric_history(r.info.run_id, "errors/dynamics_js_order_01")
    assert sorted(m.step for m in js) == steps
    assert all(0 <= m.value <= math.log(2) for m in js)
    csv = pd.read_csv(client.download_artifacts(r.info.run_id, "errors/dynamics.csv"))
    assert len(csv) == len(steps) * cfg.probes.errors_ngram_order
    assert csv.epoch.max() == 2 and csv.epoch.min() == 0
    assert "errors/dynamics.png" in {a.path for a in client.list_artifacts(r.info.run_id,
                                                                          "errors")}
    # the report's section reads it back: the closest order at the first and last snapshot
    from analyses import dynamics
    from analyses.runs import Runs

    (tmp_path / "report").mkdir()
    sec = dynamics.build(Runs.load(f"sqlite:///{tmp_path}/mlflow.db"), tmp_path / "report")
    assert sec.missing is None and sec.figures[0].png.is_file()
    table = sec.tables["dynamics"]
    near = csv.loc[csv.groupby("update").js_nats.idxmin()].sort_values("update")
    assert table["closest n-gram order"].iloc[0] == near.order.iloc[0]
    assert table["closest n-gram order"].iloc[-1] == near.order.iloc[-1]
    assert table.updates.iloc[-1] == 2 * per_epoch


def test_ngram_command_logs_each_corpus_once(tmp_path, capsys):
    from study.ngram.__main__ import main

    args = [SMOKE, "--set", f"tracking.results_dir={tmp_path}", "--no-progress",
            "--set", "ngram.max_order=6"]
    assert main(args + ["--set", "ngram.max_order=40"]) == 2
    assert "ngram.max_order = 40" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was written
    assert main(args) == 0
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                              "tags.kind = 'ngram'")
    assert sorted(r.data.tags["dataset"] for r in runs) == ["linux", "warpeace"]
    for r in runs:
        hist = client.get_metric_history(r.info.run_id, "ngram/test_nats_per_char")
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(1, 7))
        best = r.data.metrics["ngram/best_test_nats_per_char"]
        assert best == min(m.value for m in hist)
        assert math.isclose(r.data.metrics["ngram/best_test_bits_per_char"],
                            best / math.log(2), rel_tol=1e-9)
        assert {a.path for a in client.list_artifacts(r.info.run_id, "ngram")} == {
            "ngram/ngram_test_loss.csv", "ngram/ngram_test_loss.png"}
    assert main(args) == 0  # cached and logged: nothing new
    assert "already logged" in capsys.readouterr().err
    assert len(client.search_runs([runs[0].info.experiment_id], "tags.kind = 'ngram'")) == 2


def test_the_cache_is_read_back_and_keyed_by_the_split(tmp_path, capsys):
    from study.ngram import split_checksum, test_log_probs

    corpus = load_corpus(DataConfig(max_chars=20000), tmp_path)
    first = test_log_probs(corpus, [1, 3], "mkn", tmp_path, progress=False)
    assert first.cached == [False, False]
    again = test_log_probs(corpus, [1, 2, 3], "mkn", tmp_path, progress=False)
    assert again.cached == [True, True, True]  # the fit stored every order up to 3
    np.testing.assert_array_equal(again.row(3), first.row(3))
    assert again.nats_per_char[2] == first.nats_per_char[1]
    path = next(tmp_path.glob("ngram/*/mkn/order_03.npz"))
    path.write_bytes(b"not a cache file")
    redo = test_log_probs(corpus, [3], "mkn", tmp_path, progress=False)
    assert "refitting" in capsys.readouterr().err and redo.cached == [False]
    np.testing.assert_array_equal(redo.row(3), first.row(3))
    other = load_corpus(DataConfig(max_chars=20000, splits=[0.8, 0.15, 0.05]), tmp_path)
    assert split_checksum(other) != split_checksum(corpus)


def test_brace_table_on_hand_built_code():
    """Only braces in code count: the '}' in the string and the '{' in the comment do not,
    so the '}' after the comment has no opener."""
    text = "int f() {\n\tif (x) { y(\"}\"); }\n}\n/* { */ }\n"
    closes = [i for i, c in enumerate(text) if c == "}"]  # string, if, function, stray
    p_model = np.full(len(text), 0.3)
    p_ngram = np.full(len(text), 0.2)
    p_model[closes[2]] = 0.1  # the function's closer: the model does worse there
    df = errors.brace_table(text, p_model, p_ngram, bins=(1, 15, math.inf))
    assert df.braces.tolist() == [1, 1]  # the if's '}' at distance 10, the function's at 22
    assert df.mean_p_model.tolist() == [0.3, 0.1]
    assert df.mean_p_ngram.tolist() == [0.2, 0.2]
    assert df.frac_model_better.tolist() == [1.0, 0.0]
    assert df.dist_chars.tolist() == ["1-14", "≥15"]


def test_js_divergence_and_model_distributions():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(7), size=50)
    q = rng.dirichlet(np.ones(7), size=50)
    assert np.allclose(js_divergence(p, p), 0, atol=1e-12)
    assert np.allclose(js_divergence(p, q), js_divergence(q, p))
    one_hot = np.eye(7)[[0, 1]]
    assert np.allclose(js_divergence(one_hot[:1], one_hot[1:]), math.log(2))
    torch.manual_seed(0)
    model = CharLM(7, ModelConfig(hidden_size=16, num_layers=2)).double()
    ids = torch.randint(0, 7, (120,))
    dist = model_distributions(model, ids)
    assert np.isnan(dist[0]).all()
    assert np.allclose(dist[1:].sum(1), 1)
    nats = per_char_nats(model, ids, 1, 500, "cpu")  # one stream: the same reading
    got = -np.log(dist[np.arange(1, 120), ids[1:].numpy()])
    np.testing.assert_allclose(got, nats[1:], rtol=1e-9)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", " ", "\t", "\r\n", "\n", "é", "中", "😀", "{", "}",
                                 "\"", "'", ",", "int x;", "Pierre ", "x" * 90]),
                min_size=30, max_size=120).map("".join))
def test_the_analysis_works_on_any_text(text):
    """The breakdown and the braces on any UTF-8 text a user points data.path at: CRLF,
    tabs, non-ASCII, long lines, tiny files. The categories partition the errors and
    every number logged is finite where it is defined."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.txt"
        path.write_bytes(text.encode("utf-8"))
        cfg = config_mod.load(SMOKE, [f"data.path={path}", f"tracking.results_dir={tmp}",
                                      "ablation.datasets=[]",
                                      "train.batch_size=1", "train.eval_seq_len=16",
                                      "ngram.max_order=5", "probes.errors_ngram_order=3"])
        corpus = load_corpus(cfg.data, Path(tmp) / "cache")
        torch.manual_seed(0)
        model = CharLM(corpus.vocab_size, cfg.model)
        res = errors.analyse(model, corpus, cfg, Path(tmp) / "out", "any text",
                             progress=False)
        m = res.metrics
        assert m["errors/scored_chars"] == len(corpus.splits["test"]) - 1  # all but ids[0]
        if m["errors/errors"]:
            assert math.isclose(sum(m[f"errors/frac_{c}"] for c in CATEGORIES), 1.0,
                                abs_tol=1e-9)
        assert res.summary.errors.sum() == m["errors/errors"]
        assert (Path(tmp) / "out" / "errors.html").read_text(encoding="utf-8")
