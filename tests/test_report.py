"""The report rebuilt from the smoke ablation's MLflow runs: every section's files, the
tables' rows, what a missing input says, and selection."""

import re

import pandas as pd
import yaml

from analyses import report
from analyses.table1 import PUBLISHED
from study.config import TrackingConfig
from study.tracking import Reader, tracking_uri


def uri_of(results):
    return tracking_uri(TrackingConfig(results_dir=str(results)))


def test_report_from_the_smoke_runs(smoke, tmp_path):
    out = tmp_path / "report"
    assert report.main(["--tracking-uri", uri_of(smoke), "--experiment", "smoke",
                        "--out", str(out)]) == 0
    # (War and Peace's smoke units are too weak to draw: only Linux gets a unit figure)
    for name in ("variants", "learning_curves", "saturation_warpeace", "saturation_linux",
                 "units_linux", "error_flow_warpeace", "error_flow_linux"):
        for ext in ("png", "pdf"):
            f = out / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
    t1 = pd.read_csv(out / "table1.csv")
    assert len(t1) == 2 and set(t1.dataset) == {"warpeace", "linux"}  # one size, 2 corpora
    assert t1["lstm test nats/char"].notna().all() and t1["rnn test nats/char"].isna().all()
    units = pd.read_csv(out / "best_units.csv")
    assert set(units.dataset) == {"warpeace", "linux"} and units.drawn.any()
    v = pd.read_csv(out / "variants.csv")
    assert len(v) == 6 and set(v.variant) == {"peephole", "lstm", "gru"}
    # one seed each: n = 1, no sd, no Welch test
    assert (v["n seeds"] == 1).all() and v["test nats/char sd"].isna().all()
    assert v["Welch p vs baseline"].isna().all() and v["test nats/char mean"].notna().all()
    claims = pd.read_csv(out / "claims.csv")
    assert len(claims) == len(yaml.safe_load(PUBLISHED.read_text())["claims"])
    assert set(claims.verdict) <= {"reproduced", "not reproduced", "not run",
                                   "too small to judge"}
    # 2 epochs of 20,000 characters at width 32: every claim the runs bear on says so
    assert set(claims.verdict) == {"not run", "too small to judge"}
    assert claims[claims.verdict == "too small to judge"].evidence.str.contains(
        "2 epochs trained (needs ≥ 5); width 32 units (needs ≥ 64)", regex=False).all()
    # rnn was not run: the claim that needs it says so
    by_claim = claims.set_index("claim")
    assert by_claim.loc["LSTM and GRU reach a lower test loss than the RNN",
                        "verdict"] == "not run"
    # one seed: the margin rule, said so, every loss with its unit and split
    np_claim = by_claim.loc["Dropping the peepholes (NP, our `lstm`) costs nothing "
                            "significant", "evidence"]
    assert "one seed: a difference under 0.02 nats/char is not claimed" in np_claim
    assert np_claim.count("test nats/char") == 2  # one per corpus
    md = (out / "report.md").read_text()
    assert "| linux | peephole | " in md and " ± – | 1 |" in md  # mean ± sd, n
    assert "Not available: no study runs: run `python -m study.run " \
           "configs/sweep_bptt_clip.yaml`" in md  # no sweep yet: says what to run
    assert "nats per character" in md and "## Claims" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # self-contained
    # every table has a caption that says what it is (no bare identifier), text columns
    # left-aligned, numbers right-aligned
    captions = re.findall(r"<caption>(.*?)</caption>", html)
    assert len(captions) == html.count("<table")
    assert not [c for c in captions if re.fullmatch(r"\w+", c)]
    assert all(("nats/char" in c or "bits/char" in c) for c in captions
               if "unit per concept" not in c)
    assert "<th class='l'>dataset</th>" in html and "<th class='r'>n seeds</th>" in html
    assert "Decay of the error flow" in html and "only up to 40" in html
    reader = Reader(uri_of(smoke))
    (run,) = reader.runs(["report"])
    for name in ("report.md", "report.html", "variants.png"):
        assert reader.download(run.run_id, name, tmp_path / "logged") is not None, name


def test_report_selects_by_run_id_and_tag(smoke, tmp_path, capsys):
    ids = [r.run_id for r in Reader(uri_of(smoke)).runs(
        ["smoke"], tags={"kind": "train", "dataset": "linux"})]
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
    assert report.main(["--tracking-uri", uri_of(smoke), "--run-id", "0" * 32,
                        "--out", str(tmp_path / "r4"), "--no-log"]) == 2
    assert "no run 00000000" in capsys.readouterr().err  # a clear error, no traceback
