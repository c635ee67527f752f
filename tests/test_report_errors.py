"""The error-analysis section (analyses.error_analysis) and its claims (analyses.error_claims):
built from the smoke ablation's runs (probes.errors: true) with study.ngram's runs on the same
20,000-character corpora beside them, in a copy of the smoke store; runs on another corpus
never set beside them; each claim's verdicts on runs built in memory."""

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analyses import claims, common, error_analysis, error_claims
from analyses.error_analysis import ORDERS, PUBLISHED_COLUMN, corpus_keys, same_corpus
from analyses.runs import Runs, frame
from analyses.verdicts import NOT, NOT_RUN, REPRODUCED
from study.breakdown import CATEGORIES, LABELS
from study.config import TrackingConfig
from study.ngram.__main__ import main as ngram_main
from study.tracking import RunRecord, Store, metric_key, tracking_uri

SMOKE = str(Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml")
EXPERIMENTS = ["smoke", "smoke_ngram"]


def uri_of(results):
    return tracking_uri(TrackingConfig(results_dir=str(results)))


@pytest.fixture(scope="module")
def store(smoke, tmp_path_factory):
    """A copy of the smoke store (the shared one stays as the other tests expect it: one
    experiment) with study.ngram's runs on the smoke corpora in an experiment of their own.
    The copy's training runs still read their artifacts where the original logged them."""
    dst = tmp_path_factory.mktemp("errors_store")
    shutil.copy2(smoke / "mlflow.db", dst / "mlflow.db")
    if (smoke / "cache").is_dir():  # the corpora and n-grams: read, not made again
        shutil.copytree(smoke / "cache", dst / "cache")
    assert ngram_main([SMOKE, "--set", f"tracking.results_dir={dst}", "--set",
                       "tracking.experiment=smoke_ngram", "--no-progress"]) == 0
    return dst


def logged(uri, experiment, kind):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.kind = '{kind}'")


def test_the_section_from_the_smoke_runs_and_their_ngrams(store, tmp_path):
    uri = uri_of(store)
    runs = Runs.load(uri, EXPERIMENTS)
    common.style()
    sec = error_analysis.build(runs, tmp_path)
    assert sec.missing is None and "Karpathy15" in sec.title
    for name in ("ngram_orders", "error_breakdown"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
        assert (tmp_path / f"{name}.pdf").is_file()
    assert {f.png.name for f in sec.figures} == {"ngram_orders.png", "error_breakdown.png"}
    assert set(sec.tables) == {"ngram", "ngram_vs_models", "error_breakdown"}
    for name, t in sec.tables.items():
        assert (tmp_path / f"{name}.csv").is_file() and len(t)
        assert "nats/char" in sec.captions[name] and "test split" in sec.captions[name]
    # the n-gram table: what each n-gram run logged, on the same 20,000-character slice
    ng = sec.tables["ngram"].set_index("dataset")
    ngram_runs = logged(uri, "smoke_ngram", "ngram")
    assert set(ng.index) == {r.data.tags["dataset"] for r in ngram_runs} == {"warpeace",
                                                                             "linux"}
    for r in ngram_runs:
        row, m = ng.loc[r.data.tags["dataset"]], r.data.metrics
        assert row.corpus == "first 20,000 chars" and r.data.params["data.max_chars"] == "20000"
        for k in ORDERS:
            assert row[f"{k}-gram test nats/char"] == pytest.approx(
                m[f"ngram/order_{k:02d}_test_nats_per_char"])
        assert row["best order"] == m["ngram/best_order"]
        assert row["best n-gram test nats/char"] == pytest.approx(
            m["ngram/best_test_nats_per_char"])
        assert math.isnan(row[PUBLISHED_COLUMN])  # a slice: the paper's 20-gram is not beside it
    # beside it, every smoke training run (one seed each) with the loss it logged
    train = logged(uri, "smoke", "train")
    vs = sec.tables["ngram_vs_models"].set_index(["dataset", "variant"])
    assert len(vs) == len(train) == 6 and (vs["n seeds"] == 1).all()
    assert (vs["size"] == "2×32").all() and (vs.corpus == "first 20,000 chars").all()
    for r in train:
        row = vs.loc[(r.data.tags["dataset"], r.data.tags["variant"])]
        assert row["test nats/char"] == pytest.approx(
            r.data.metrics[metric_key("test_nats_per_char")])
        assert row["model − 20-gram test nats/char"] == pytest.approx(
            row["test nats/char"] - row["20-gram test nats/char"])
    # the breakdown: the error rate and each category's share each run logged, in %
    bd = sec.tables["error_breakdown"].set_index(["dataset", "variant"])
    assert len(bd) == 6 and np.isfinite(bd.select_dtypes("number").to_numpy()).all()
    for r in train:
        row, m = bd.loc[(r.data.tags["dataset"], r.data.tags["variant"])], r.data.metrics
        assert row["error rate % of test chars"] == pytest.approx(100 * m["errors/error_rate"])
        for c in CATEGORIES:
            assert row[f"{LABELS[c]} % of errors"] == pytest.approx(
                100 * m[f"errors/frac_{c}"])
    assert set(sec.sources) >= {r.info.run_id for r in train + ngram_runs}
    # 20,000 characters of Linux hold too few braces: the section says so, and the claim
    assert "**Closing braces**: no run" in sec.text and "probes.errors: true" in sec.text
    assert error_claims.c_lstm_gain_long_range(runs, None)[0] == NOT_RUN
    verdict, evidence = error_claims.c_lstm_beats_20gram(runs, None)
    assert verdict in (REPRODUCED, NOT) and evidence.count("first 20,000 chars") == 2
    behind = error_claims.behind_errors("lstm_beats_20gram", runs)
    assert set(behind["tag.variant"]) == {"lstm"} and len(behind) == 2
    assert "2 epochs trained" in claims.too_small(behind)  # the size rule applies


def test_an_ngram_on_another_corpus_is_not_set_beside_the_smoke_runs(store, tmp_path):
    """An n-gram on the whole War and Peace (a fake run, logged as study.ngram logs one)
    appears in the n-gram table with the paper's 20-gram, but no 20,000-character run is
    compared with it."""
    s = Store(TrackingConfig(results_dir=str(store), experiment="full_ngram"))
    run = s.start("ngram-warpeace", {"kind": "ngram", "dataset": "warpeace"})
    run.log_params({"data.max_chars": None, "data.splits": None, "ngram.smoothing": "mkn",
                    "ngram.max_order": 20})
    run.log_metrics({f"ngram/order_{k:02d}_test_nats_per_char": 3.0 - k / 10
                     for k in range(1, 21)})
    run.end("FINISHED")
    runs = Runs.load(uri_of(store), [*EXPERIMENTS, "full_ngram"])
    common.style()
    sec = error_analysis.build(runs, tmp_path)
    ng = sec.tables["ngram"]
    full = ng[ng.corpus == "whole corpus"]
    assert list(full.dataset) == ["warpeace"] and full[PUBLISHED_COLUMN].item() == 1.195
    assert full["20-gram test nats/char"].item() == pytest.approx(1.0)
    vs = sec.tables["ngram_vs_models"]
    assert len(vs) == 6 and set(vs.corpus) == {"first 20,000 chars"}
    assert run.run_id in sec.sources
    _, evidence = error_claims.c_lstm_beats_20gram(runs, None)
    assert "whole corpus" not in evidence and "1.000" not in evidence


def test_runs_match_on_dataset_max_chars_and_splits_as_logged():
    df = pd.DataFrame({"tag.dataset": ["linux", "linux", "linux", "linux", "warpeace"],
                       "param.data.max_chars": ["20000", 20000.0, "None", np.nan, "20000"],
                       "param.data.splits": ["None", None, "None", "None", "None"]})
    keys = corpus_keys(df)
    assert keys[0] == keys[1] == ("linux", "20000", "None")
    assert keys[2] == keys[3] == ("linux", "None", "None")  # missing is None
    assert list(same_corpus(df, ("linux", "20000", "None")).index) == [0, 1]
    no_splits = df.drop(columns="param.data.splits")  # not logged at all: None
    assert list(same_corpus(no_splits, ("linux", "None", "None")).index) == [2, 3]
    other = df.assign(**{"param.data.splits": "[0.8, 0.1, 0.1]"})
    assert same_corpus(other, ("linux", "20000", "None")).empty


# claims and the braces part on runs built in memory -------------------------------------

class StandIn:
    """What the section and the checks read from analyses.runs.Runs: .all, .train (and
    .of_kind), .csv; artifacts given as frames."""

    def __init__(self, records, artifacts=None):
        self.all = frame(records)
        self.train = self.of_kind("train")
        self.artifacts = artifacts or {}

    def of_kind(self, kind):
        return self.all[self.all["tag.kind"] == kind] if len(self.all) else self.all

    def csv(self, run_id, path):
        return self.artifacts.get((run_id, path))


def train_run(run_id, dataset, test, variant="lstm", seed=0, epochs=10, hidden=128,
              max_chars=None, braces=None):
    metrics = {"test_nats_per_char": test, "epochs_trained": float(epochs)}
    if braces is not None:
        metrics["errors/braces"] = float(braces)
    return RunRecord(run_id, run_id, "ablation", "FINISHED", seed, seed + 1,
                     {"kind": "train", "variant": variant, "dataset": dataset,
                      "seed": str(seed)},
                     {"model.num_layers": "2", "model.hidden_size": str(hidden),
                      "train.epochs": str(epochs), "data.max_chars": str(max_chars),
                      "data.splits": "None"}, metrics)


def ngram_run(run_id, dataset, loss20, max_chars=None):
    return RunRecord(run_id, run_id, "ablation", "FINISHED", 0, 1,
                     {"kind": "ngram", "dataset": dataset},
                     {"data.max_chars": str(max_chars), "data.splits": "None",
                      "ngram.smoothing": "mkn"},
                     {**{f"ngram/order_{k:02d}_test_nats_per_char": loss20 + 1 / k
                         for k in range(1, 20)},
                      "ngram/order_20_test_nats_per_char": loss20})


def test_lstm_beats_20gram_gives_each_verdict():
    grams = [ngram_run("ng-wp", "warpeace", 1.195), ngram_run("ng-lk", "linux", 0.889)]
    better = [train_run(f"wp{s}", "warpeace", 1.08 + s / 100, seed=s) for s in (0, 1)] + \
        [train_run("lk0", "linux", 0.84)]
    verdict, evidence = error_claims.c_lstm_beats_20gram(StandIn(grams + better), None)
    assert verdict == REPRODUCED, evidence
    assert "lstm 2×128 1.085 (n = 2) vs 20-gram (mkn) 1.195" in evidence
    assert "lower by 0.110" in evidence and "lower by 0.049" in evidence
    assert "Karpathy15: 1.077 vs 1.195" in evidence
    worse = better[:2] + [train_run("lk0", "linux", 0.95)]
    verdict, evidence = error_claims.c_lstm_beats_20gram(StandIn(grams + worse), None)
    assert verdict == NOT and "higher by 0.061" in evidence
    # the best lstm size decides; a smaller one may lose
    sizes = better + [train_run("lk-small", "linux", 1.5, hidden=32)]
    assert error_claims.c_lstm_beats_20gram(StandIn(grams + sizes), None)[0] == REPRODUCED
    assert set(error_claims.behind_errors("lstm_beats_20gram", StandIn(grams + sizes)).run_id) \
        == {"wp0", "wp1", "lk0"}
    # not run: no n-gram, an n-gram on another corpus, or no lstm beside it
    assert error_claims.c_lstm_beats_20gram(StandIn(better), None)[0] == NOT_RUN
    sliced = [train_run("wp-s", "warpeace", 1.0, max_chars=20000)]
    verdict, evidence = error_claims.c_lstm_beats_20gram(StandIn(grams + sliced), None)
    assert verdict == NOT_RUN and "python -m study.ngram" in evidence
    gru = [train_run("g", "warpeace", 1.0, variant="gru")]
    assert error_claims.c_lstm_beats_20gram(StandIn(grams + gru), None)[0] == NOT_RUN


def braces(p_model, p_ngram, n=(30, 30, 30, 30, 30)):
    """A braces.csv as study.errors writes it, over bins 1-9 ... ≥60."""
    edges = [(1, 10), (10, 20), (20, 40), (40, 60), (60, math.inf)]
    return pd.DataFrame([{"dist_chars": f"{lo}-{hi - 1}" if hi < math.inf else f"≥{lo}",
                          "lo_chars": lo, "hi_chars": hi, "braces": k, "mean_p_model": pm,
                          "mean_p_ngram": pn, "frac_model_better": float(pm > pn)}
                         for (lo, hi), pm, pn, k in zip(edges, p_model, p_ngram, n,
                                                        strict=True)])


def brace_runs(tables, variant="lstm", epochs=10):
    recs = [train_run(f"b{i}", "linux", 1.0, variant, seed=i, epochs=epochs, braces=150)
            for i in range(len(tables))]
    return StandIn(recs, {(f"b{i}", "errors/braces.csv"): t for i, t in enumerate(tables)})


def test_lstm_gain_long_range_gives_each_verdict():
    ngram = [0.2, 0.2, 0.3, 0.3, 0.4]
    ahead = braces([0.5, 0.5, 0.5, 0.4, 0.3], ngram)  # ahead to 60, behind beyond
    verdict, evidence = error_claims.c_lstm_gain_long_range(brace_runs([ahead]), None)
    assert verdict == REPRODUCED, evidence
    assert "1-9 chars 0.50 vs 0.20 (n = 30)" in evidence
    assert "beyond 60 chars: ≥60 chars 0.30 vs 0.40" in evidence
    behind_at_40 = braces([0.5, 0.5, 0.5, 0.25, 0.5], ngram)
    verdict, evidence = error_claims.c_lstm_gain_long_range(brace_runs([behind_at_40]), None)
    assert verdict == NOT and "40-59 chars 0.25 vs 0.30" in evidence
    # a bin with fewer than 10 braces per run does not count, either way
    sparse = braces([0.1, 0.5, 0.5, 0.4, 0.3], ngram, n=(5, 30, 30, 30, 30))
    assert error_claims.c_lstm_gain_long_range(brace_runs([sparse]), None)[0] == REPRODUCED
    none_near = braces([0.5] * 5, ngram, n=(5, 5, 5, 5, 30))
    assert error_claims.c_lstm_gain_long_range(brace_runs([none_near]), None)[0] == NOT_RUN
    assert error_claims.c_lstm_gain_long_range(brace_runs([ahead], "gru"), None)[0] == NOT_RUN
    assert error_claims.c_lstm_gain_long_range(StandIn([]), None)[0] == NOT_RUN
    # two seeds pooled, weighted by their braces: (0.1·10 + 0.5·30) / 40 = 0.4 beats the
    # 20-gram's 0.3 at 20-59 chars, where the unweighted mean 0.3 would not
    pooled = brace_runs([braces([0.1] * 5, ngram, n=(10,) * 5),
                         braces([0.5] * 5, ngram, n=(30,) * 5)])
    verdict, evidence = error_claims.c_lstm_gain_long_range(pooled, None)
    assert verdict == REPRODUCED and "20-39 chars 0.40 vs 0.30 (n = 20)" in evidence
    assert "(2 runs)" in evidence
    small = brace_runs([ahead], epochs=2)
    behind = error_claims.behind_errors("lstm_gain_long_range", small)
    assert list(behind.run_id) == ["b0"] and "2 epochs trained" in claims.too_small(behind)
    with pytest.raises(KeyError, match="lstm_beats_20gram"):
        error_claims.behind_errors("quote_cell", small)


def test_the_braces_part_pools_seeds_and_draws_model_and_20gram(tmp_path):
    ngram = [0.2, 0.2, 0.3, 0.3, 0.4]
    runs = brace_runs([braces([0.1] * 5, ngram, n=(10,) * 5),
                       braces([0.5] * 5, ngram, n=(30,) * 5)])
    common.style()
    sec = error_analysis.build(runs, tmp_path)
    assert (tmp_path / "braces.png").read_bytes()[:4] == b"\x89PNG"
    t = sec.tables["braces"]
    assert len(t) == 5 and (t.runs == 2).all() and (t["braces per run"] == 20).all()
    assert t["model mean p(})"].tolist() == pytest.approx([0.4] * 5)
    assert t["20-gram mean p(})"].tolist() == pytest.approx(ngram)
    assert "no n-gram run" in sec.text and "**Closing braces**: for every '}'" in sec.text
    assert sorted(sec.sources) == ["b0", "b1"]


def test_without_inputs_the_section_says_what_to_run(tmp_path):
    sec = error_analysis.build(StandIn([train_run("a", "linux", 1.0)]), tmp_path)
    assert sec.missing and "python -m study.ngram" in sec.missing
    assert "python -m study.errors" in sec.missing and not sec.figures


def test_the_breakdown_sets_small_and_large_models_side_by_side(tmp_path):
    """A variant trained at two sizes gets a bar and a row per size, each the mean over
    its own seeds."""
    def with_errors(rec, rate, ngram_share):
        fracs = {f"errors/frac_{c}": (1 - ngram_share) / (len(CATEGORIES) - 1)
                 for c in CATEGORIES}
        fracs["errors/frac_ngram"] = ngram_share
        rec.metrics.update({"errors/error_rate": rate, **fracs})
        return rec

    records = [with_errors(train_run("s0", "warpeace", 1.4, hidden=64), 0.6, 0.40),
               with_errors(train_run("s1", "warpeace", 1.4, hidden=64, seed=1), 0.6, 0.30),
               with_errors(train_run("l0", "warpeace", 1.2, hidden=256), 0.5, 0.20)]
    sec = common.Section("errors")
    common.style()
    error_analysis.breakdown_part(StandIn(records), sec, tmp_path)
    t = sec.tables["error_breakdown"].set_index("size").loc[["2×64", "2×256"]]
    assert list(t["n seeds"]) == [2, 1]
    assert list(t[f"{LABELS['ngram']} % of errors"]) == pytest.approx([35.0, 20.0])
    assert list(t["error rate % of test chars"]) == pytest.approx([60.0, 50.0])
    assert sec.figures[0].png.is_file()
