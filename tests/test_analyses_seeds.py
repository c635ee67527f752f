"""analyses/ without a store: it reads runs only through study.tracking (no mlflow import,
no raw client), takes variant facts from the cell registry, and compares variants over
seeds (mean, sd, n; Welch's t-test with seeds, the margin rule with one)."""

import ast
from pathlib import Path

import pandas as pd
import pytest

from analyses import claims, variants
from analyses.common import NEUTRAL, palette, variant_order
from analyses.runs import Runs, frame
from analyses.seeds import MARGIN, ONE_SEED, WELCH, losses_by_seed, lower, summary
from study.engine.cells import variants as registry
from study.tracking import RunRecord

ANALYSES = Path(__file__).resolve().parent.parent / "analyses"


def mlflow_uses(source: str) -> list[str]:
    """`import mlflow...`, `from mlflow... import`, and `.client` / `._client` reached on
    anything: what analyses/ must not do."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "mlflow"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
            found.append(f"from {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr in ("client", "_client"):
            found.append(f".{node.attr}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__" \
                and node.args and getattr(node.args[0], "value", "") == "mlflow":
            found.append("__import__('mlflow')")
    return found


def test_the_checker_sees_each_way_in():
    for src in ("import mlflow", "import mlflow.tracking as t", "from mlflow import x",
                "from mlflow.tracking import MlflowClient", "store.client.get_run(1)",
                "r._client", "__import__('mlflow')"):
        assert mlflow_uses(src), src
    assert mlflow_uses("import mlflowish\nfrom study.tracking import Reader") == []


def test_no_analyses_module_imports_mlflow_or_its_client():
    files = sorted(ANALYSES.glob("*.py"))
    assert len(files) >= 10  # the package is where this test thinks it is
    bad = {f.name: u for f in files if (u := mlflow_uses(f.read_text(encoding="utf-8")))}
    assert bad == {}


# ---------------------------------------------------------------------------------------
# runs as a table, from the records study.tracking.Reader returns


def record(run_id, variant="lstm", dataset="warpeace", seed=0, test=1.5, status="FINISHED",
           start=1, layers=2, hidden=64, kind="train"):
    return RunRecord(run_id, f"{variant}-{dataset}-s{seed}", "ablation", status, start,
                     start + 10, {"kind": kind, "variant": variant, "dataset": dataset,
                                  "seed": str(seed)},
                     {"model.num_layers": str(layers), "model.hidden_size": str(hidden),
                      "train.seed": str(seed)}, {"test_nats_per_char": test})


def test_frame_keeps_the_layout_analyses_reads():
    df = frame([record("a", test=1.25), record("b", status="FAILED", test=9.0)])
    assert list(df.columns[:6]) == ["run_id", "run_name", "experiment", "status", "start",
                                    "end"]
    assert {"tag.variant", "tag.seed", "param.model.num_layers", "test_nats_per_char"} <= \
        set(df.columns)
    assert df["param.model.num_layers"].dtype.kind in "if"  # numeric params are numbers
    runs = Runs(reader=None, all=df)
    assert list(runs.train.run_id) == ["a"]  # finished ones only


class FakeRuns:
    """What claims and variants read from Runs, without a store."""

    def __init__(self, records):
        self.all = frame(records)
        self.train = self.all[self.all.status == "FINISHED"]

    def csv(self, run_id, path):
        return None


def two_seeds():
    """Two corpora; on warpeace lstm is clearly (and consistently) below peephole, gru only
    a little, with a wide spread."""
    losses = {("warpeace", "peephole"): [1.50, 1.52], ("warpeace", "lstm"): [1.40, 1.41],
              ("warpeace", "gru"): [1.30, 1.60], ("linux", "peephole"): [1.10, 1.12],
              ("linux", "lstm"): [1.11, 1.12]}
    return [record(f"{d}-{v}-{s}", v, d, s, x, start=s)
            for (d, v), xs in losses.items() for s, x in enumerate(xs)]


def test_summary_is_mean_sd_and_n_per_variant_and_corpus():
    df, size = losses_by_seed(FakeRuns(two_seeds()).train)
    assert size == (2, 64) and len(df) == 10
    s = summary(df).set_index(["dataset", "variant"])
    assert s.loc[("warpeace", "peephole"), "n"] == 2
    assert s.loc[("warpeace", "peephole"), "mean"] == pytest.approx(1.51)
    assert s.loc[("warpeace", "peephole"), "sd"] == pytest.approx(0.02 / 2 ** 0.5)
    assert s.loc[("warpeace", "gru"), "sd"] == pytest.approx(0.3 / 2 ** 0.5)
    # the registry's order within a corpus
    assert list(summary(df).query("dataset == 'warpeace'").variant) == \
        [v for v in registry() if v in {"peephole", "lstm", "gru"}]


def test_a_seed_run_twice_counts_once_and_other_sizes_are_left_out():
    recs = two_seeds() + [record("again", "lstm", "linux", 1, 5.0, start=99),
                          record("wide", "lstm", "linux", 7, 9.0, hidden=128)]
    df, _ = losses_by_seed(FakeRuns(recs).train)
    linux_lstm = df[(df.dataset == "linux") & (df.variant == "lstm")]
    assert sorted(linux_lstm.test) == [1.11, 5.0]  # seed 1: its newest run; no 128-wide


def test_with_seeds_welch_decides_and_with_one_seed_the_margin():
    # two seeds each: a consistent 0.1 difference is claimed ...
    v = lower(pd.Series([1.40, 1.41]), pd.Series([1.50, 1.52]))
    assert v.lower and v.p < 0.05 and v.rule.startswith(WELCH)
    # ... a larger difference of the means with a wide spread is not (the margin would)
    a, b = pd.Series([1.30, 1.60]), pd.Series([1.50, 1.52])
    assert b.mean() - a.mean() > MARGIN
    v = lower(a, b)
    assert not v.lower and v.p > 0.05 and v.rule.startswith(WELCH)
    # one seed: only a difference above MARGIN counts, and the rule says so
    v = lower(pd.Series([1.40]), pd.Series([1.41]))
    assert not v.lower and v.p != v.p and v.rule == ONE_SEED
    assert lower(pd.Series([1.38]), pd.Series([1.41])).lower
    assert lower(pd.Series([1.30, 1.31]), pd.Series([1.41])).rule == ONE_SEED  # one side


def test_claims_compare_over_seeds_and_say_how():
    runs = FakeRuns(two_seeds())
    df = claims._test_by(runs)
    verdict, evidence = claims.c_no_variant_beats_baseline(runs, df)
    assert verdict == claims.NOT  # lstm is clearly better than peephole on warpeace
    assert "clearly better: lstm" in evidence and "gru" not in evidence.split("better:")[1]
    assert WELCH in evidence and "test nats/char" in evidence
    assert "1.510 ± 0.014 (n = 2)" in evidence  # the baseline's mean ± sd, n
    verdict, evidence = claims.c_np_costs_nothing(runs, df)
    assert verdict == claims.REPRODUCED and WELCH in evidence  # peephole not clearly better
    assert ONE_SEED not in evidence


def test_claims_with_one_seed_use_the_margin_and_say_so():
    recs = [record(f"{v}-{d}", v, d, 0, x) for v, d, x in (
        ("peephole", "warpeace", 1.50), ("lstm", "warpeace", 1.49),
        ("peephole", "linux", 1.10), ("lstm", "linux", 1.05))]
    runs = FakeRuns(recs)
    df = claims._test_by(runs)
    verdict, evidence = claims.c_no_variant_beats_baseline(runs, df)
    assert verdict == claims.NOT  # linux: 0.05 below the baseline, more than MARGIN
    assert evidence.count("clearly better: lstm") == 1  # warpeace's 0.01 is not claimed
    assert ONE_SEED in evidence and WELCH not in evidence


def test_the_variants_table_shows_mean_sd_and_n():
    df, _ = losses_by_seed(FakeRuns(two_seeds()).train)
    t = variants.table(df).set_index(["dataset", "variant"])
    row = t.loc[("warpeace", "lstm")]
    assert row["n seeds"] == 2 and row["test nats/char mean"] == pytest.approx(1.405)
    assert row["vs baseline (test nats/char)"] == pytest.approx(1.405 - 1.51)
    assert row["Welch p vs baseline"] < 0.05
    assert t.loc[("warpeace", "peephole"), "Welch p vs baseline"] != \
        t.loc[("warpeace", "peephole"), "Welch p vs baseline"]  # not tested against itself
    shown = variants.shown(variants.table(df))
    assert "1.405 ± 0.007" in set(shown["test nats/char, mean ± sd"])


def test_order_and_colours_come_from_the_registry():
    names = ["gru", "an_old_variant", "peephole", "rnn"]
    known = [v for v in registry() if v in names]
    assert variant_order(names) == known + ["an_old_variant"]  # unknown last
    colours = palette(registry() + ["an_old_variant"])
    assert colours["an_old_variant"] == NEUTRAL
    assert NEUTRAL not in [colours[v] for v in registry()]
    assert len({colours[v] for v in registry()}) == len(registry())  # one each


def test_load_reads_a_store_through_the_reader(tmp_path, monkeypatch):
    from study import tracking
    from study.config import TrackingConfig

    monkeypatch.setattr(tracking, "git_commit", lambda: "test")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = {}
    for exp, kind in (("ablation", "train"), ("report", "report")):
        t = tracking.Store(TrackingConfig(experiment=exp, uri=uri)).start(
            f"{exp}-run", {"kind": kind, "variant": "lstm", "dataset": "warpeace", "seed": 0})
        t.log_params({"model.num_layers": 2, "model.hidden_size": 64})
        t.log_metrics({"val_nats_per_char": 2.0}, step=1)
        t.log_metrics({"val_nats_per_char": 1.8, "test_nats_per_char": 1.5}, step=2)
        t.log_text("layer,gate\n1,f\n", "probes/saturation.csv")
        t.end()
        ids[exp] = t.run_id
    runs = Runs.load(uri)  # default: every experiment but Default and report
    assert runs.experiments == ["ablation"] and list(runs.all.run_id) == [ids["ablation"]]
    row = runs.train.iloc[0]
    assert row.run_name == "ablation-run" and row["tag.seed"] == "0"
    assert row["param.model.num_layers"] == 2 and row.test_nats_per_char == 1.5
    assert row.val_nats_per_char == 1.8  # the last value
    hist = runs.history(ids["ablation"], "val_nats_per_char")
    assert list(hist.columns) == ["step", "value", "timestamp"]
    assert list(hist.step) == [1, 2] and list(hist.value) == [2.0, 1.8]
    assert runs.history(ids["ablation"], "nope").empty
    assert list(runs.csv(ids["ablation"], "probes/saturation.csv").gate) == ["f"]
    assert runs.csv(ids["ablation"], "probes/missing.csv") is None
    assert set(Runs.load(uri, ["report"]).all.run_id) == {ids["report"]}
    assert set(Runs.load(uri, run_ids=[ids["report"]]).all.run_id) == {ids["report"]}
    assert Runs.load(uri, ["nope"]).experiments == []
    with pytest.raises(tracking.StoreError):
        Runs.load(f"sqlite:///{tmp_path / 'typo.db'}")
