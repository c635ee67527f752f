"""The report rebuilt from the smoke ablation's MLflow runs: every section's files, the
tables' rows, what a missing input says, and selection."""

import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from analyses import report
from analyses.table1 import PUBLISHED
from study.config import TrackingConfig
from study.tracking import tracking_uri


def uri_of(results):
    return tracking_uri(TrackingConfig(results_dir=str(results)))


def test_report_from_the_smoke_runs(smoke, tmp_path):
    out = tmp_path / "report"
    assert report.main(["--tracking-uri", uri_of(smoke), "--experiment", "smoke",
                        "--out", str(out)]) == 0
    # (War and Peace's smoke units are too weak to draw: only Linux gets a unit figure)
    for name in ("variants", "learning_curves", "saturation_warpeace", "saturation_linux",
                 "units_linux", "error_flow"):
        for ext in ("png", "pdf"):
            f = out / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
    t1 = pd.read_csv(out / "table1.csv")
    assert len(t1) == 2 and set(t1.dataset) == {"warpeace", "linux"}  # one size, 2 corpora
    assert t1["lstm nats/char"].notna().all() and t1["rnn nats/char"].isna().all()
    units = pd.read_csv(out / "best_units.csv")
    assert set(units.dataset) == {"warpeace", "linux"} and units.drawn.any()
    v = pd.read_csv(out / "variants.csv")
    assert len(v) == 6 and set(v.variant) == {"peephole", "lstm", "gru"}
    claims = pd.read_csv(out / "claims.csv")
    assert len(claims) == len(yaml.safe_load(PUBLISHED.read_text())["claims"])
    assert set(claims.verdict) <= {"reproduced", "not reproduced", "not run"}
    # rnn was not run: the claim that needs it says so
    assert claims.set_index("claim").loc[
        "LSTM and GRU reach a lower test loss than the RNN", "verdict"] == "not run"
    md = (out / "report.md").read_text()
    assert "Not available: no study runs: run `python -m study.run " \
           "configs/sweep_bptt_clip.yaml`" in md  # no sweep yet: says what to run
    assert "nats per character" in md and "## Claims" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # self-contained
    client = MlflowClient(uri_of(smoke))
    exp = client.get_experiment_by_name("report")
    (run,) = client.search_runs([exp.experiment_id])
    assert {"report.md", "report.html", "variants.png"} <= \
        {a.path for a in client.list_artifacts(run.info.run_id)}


def test_report_selects_by_run_id_and_tag(smoke, tmp_path, capsys):
    client = MlflowClient(uri_of(smoke))
    exp = client.get_experiment_by_name("smoke")
    ids = [r.info.run_id for r in client.search_runs(
        [exp.experiment_id], "tags.kind = 'train' and tags.dataset = 'linux'")]
    out = tmp_path / "r1"
    assert report.main(["--tracking-uri", uri_of(smoke), "--run-id", ids[0], "--run-id",
                        ids[1], "--out", str(out), "--no-log"]) == 0
    assert len(pd.read_csv(out / "variants.csv")) == 2
    out2 = tmp_path / "r2"
    assert report.main(["--tracking-uri", uri_of(smoke), "--experiment", "smoke", "--tag",
                        "dataset=warpeace", "--out", str(out2), "--no-log"]) == 0
    assert set(pd.read_csv(out2 / "table1.csv").dataset) == {"warpeace"}
    assert report.main(["--tracking-uri", uri_of(smoke), "--experiment", "nope",
                        "--out", str(tmp_path / "r3")]) == 2
    assert "no experiment named nope" in capsys.readouterr().err
