"""The runner end to end: MLflow runs read back through the client, skipping, resuming
after a hard kill, and bad inputs that stop before any run exists."""

import math
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from study import data, run
from study.config import TrackingConfig
from study.tracking import tracking_uri

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def client_for(results: Path) -> MlflowClient:
    return MlflowClient(tracking_uri(TrackingConfig(results_dir=str(results))))


def test_smoke_ablation_leaves_parent_and_child_runs(smoke):
    client = client_for(smoke)
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "ablation"]
    children = [r for r in runs if r.data.tags.get("kind") == "train"]
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {(c.data.tags["variant"], c.data.tags["dataset"]) for c in children} == \
        {(v, d) for v in ("peephole", "lstm", "gru") for d in ("warpeace", "linux")}
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.info.status == "FINISHED"
        for tag in ("seed", "config_hash", "mlflow.source.git.commit", "data_sha256",
                    "num_params"):
            assert c.data.tags[tag]
        p = c.data.params
        assert p["model.cell"] == c.data.tags["variant"]
        assert p["data.corpus"] == c.data.tags["dataset"] and p["train.seq_len"] == "32"
        for key in ("loss/train_nats_per_char", "loss/val_nats_per_char",
                    "loss/val_bits_per_char", "train/grad_norm_preclip_mean",
                    "time/train_chars_per_s", "time/epoch_seconds"):
            hist = client.get_metric_history(c.info.run_id, key)
            assert [m.step for m in hist] == [1, 2], key
        m = c.data.metrics
        # the learning rate does not change in 2 epochs (decay after 10): a param, no chart
        assert "train/lr" not in m and p["train.lr"] == "0.002"
        bits = m["loss/test_nats_per_char"] / math.log(2)
        assert m["loss/test_bits_per_char"] == pytest.approx(bits)
        assert 0 < m["loss/test_nats_per_char"] < 5
        arts = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert {"config.yaml", "samples", "checkpoint"} <= arts
        samples = {a.path for a in client.list_artifacts(c.info.run_id, "samples")}
        assert samples == {"samples/epoch_001.txt", "samples/epoch_002.txt"}
        ck = client.download_artifacts(c.info.run_id, "checkpoint/best.pt")
        payload = torch.load(ck, map_location="cpu", weights_only=True)
        assert payload["config"]["model"]["cell"] == c.data.tags["variant"]
        assert payload["vocab"] and payload["model"]
    summary = client.download_artifacts(parent.info.run_id, "summary.csv")
    assert "test nats/char" in Path(summary).read_text()


def test_smoke_runs_carry_the_probes(smoke):
    client = client_for(smoke)
    exp = client.get_experiment_by_name("smoke")
    for c in client.search_runs([exp.experiment_id], "tags.kind = 'train'"):
        probes = {a.path for a in client.list_artifacts(c.info.run_id, "probes")}
        assert {"probes/saturation.csv", "probes/saturation.png", "probes/unit_scores.csv",
                "probes/best_units.csv", "probes/error_flow.csv", "probes/error_flow.png",
                "probes/traces", "probes/traces.html"} <= probes, probes
        traces = {a.path for a in client.list_artifacts(c.info.run_id, "probes/traces")}
        assert any(p.endswith(".png") for p in traces)
        m = c.data.metrics
        assert 0 < m["time/probe_seconds"] < 60
        assert "units/line_position_score" in m
        # concepts absent from the probed text (no comments in War and Peace) are not scored
        expect = "units/in_quotes_score" if c.data.tags["dataset"] == "warpeace" \
            else "units/in_comment_score"
        assert expect in m
        gates = {"i", "f", "o"} if c.data.tags["variant"] != "gru" else {"r", "u"}
        for g in gates:
            assert 0 <= m[f"saturation/L1_{g}_left_mean"] <= 1
        # the error flow's curves over q are a table and a figure, summarised by its decay
        flow = ("errflow/h_L1_log_decay_per_step", "errflow/init_h_L2_log_decay_per_step")
        assert all(math.isfinite(m[k]) for k in flow)
        assert len(client.get_metric_history(c.info.run_id, flow[0])) == 1
        assert c.data.tags["unit.line_position"].startswith("layer ")


def test_inspect_rerenders_traces_from_a_logged_run(smoke, tmp_path, capsys):
    from study import inspect

    client = client_for(smoke)
    exp = client.get_experiment_by_name("smoke")
    run_ = client.search_runs([exp.experiment_id],
                              "tags.kind = 'train' and tags.variant = 'lstm' "
                              "and tags.dataset = 'warpeace'")[0]
    uri = tracking_uri(TrackingConfig(results_dir=str(smoke)))
    rid = run_.info.run_id
    assert inspect.main([rid, "--tracking-uri", uri, "--out", str(tmp_path / "a"),
                         "--concept", "in_quotes", "--top", "2", "--chars", "3000"]) == 0
    page = (tmp_path / "a" / "traces.html").read_text(encoding="utf-8")
    assert "in_quotes #1:" in page and "in_quotes #2:" in page and "in_quotes #3" not in page
    text = tmp_path / "t.txt"
    text.write_text('"Well, Prince," said he.\nAnd so on.\n' * 20)
    assert inspect.main([rid, "--tracking-uri", uri, "--out", str(tmp_path / "b"),
                         "--unit", "2:5", "--text", str(text), "--log"]) == 0
    page = (tmp_path / "b" / "unit_L2c5.html").read_text()
    assert ">P</span>" in page and ">W</span>" in page and "rgb(" in page
    assert {a.path for a in client.list_artifacts(rid, "inspect")} >= {"inspect/unit_L2c5.html"}
    bad = tmp_path / "bad.txt"
    bad.write_text("\u4e2d\u6587")
    assert inspect.main([rid, "--tracking-uri", uri, "--text", str(bad)]) == 2
    assert "never saw" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="layers are 1..2"):
        inspect.main([rid, "--tracking-uri", uri, "--unit", "3:1", "--out", str(tmp_path)])


def test_rerun_skips_finished_configs(smoke, capsys):
    client = client_for(smoke)
    exp = client.get_experiment_by_name("smoke")
    before = len(client.search_runs([exp.experiment_id]))
    assert run.main([SMOKE, "--set", f"tracking.results_dir={smoke}", "--no-progress"]) == 0
    assert len(client.search_runs([exp.experiment_id])) == before  # nothing new
    assert capsys.readouterr().err.count("already finished") == 6


KILL_AFTER = str(ROOT / "tests" / "kill_after.py")


def _run_cli(results, *extra, kill_after=None):
    launch = ["-m", "study.run"] if kill_after is None else [KILL_AFTER, str(kill_after)]
    args = [sys.executable, *launch, SMOKE, "--no-progress",
            "--set", f"tracking.results_dir={results}", "--set", "ablation.variants=[lstm]",
            "--set", "ablation.datasets=[warpeace]", "--set", "train.epochs=3",
            "--set", "model.dropout=0.3", *extra]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_resume_after_a_hard_kill_ends_with_the_same_weights(tmp_path):
    whole = _run_cli(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = _run_cli(tmp_path / "split", kill_after=1)
    assert killed.returncode == 137  # died abruptly after epoch 1's checkpoint
    client = client_for(tmp_path / "split")
    exp = client.get_experiment_by_name("smoke")
    (child,) = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("kind") == "train"]
    assert child.info.status == "RUNNING"  # as a killed process leaves it
    resumed = _run_cli(tmp_path / "split", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    runs = [r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("kind") == "train"]
    assert [r.info.run_id for r in runs] == [child.info.run_id]  # the same MLflow run
    assert runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss/val_nats_per_char")]
    assert steps == [1, 2, 3]

    def last_weights(results):
        (ck,) = (results / "checkpoints" / "smoke").glob("*/last.pt")
        return torch.load(ck, map_location="cpu", weights_only=True)["model"]

    a, b = last_weights(tmp_path / "whole"), last_weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _no_runs(results: Path) -> bool:
    return not (results / "mlflow.db").exists() and not (results / "mlartifacts").exists()


@pytest.mark.parametrize("setting,needle", [
    ("train.sequence=5", "unknown key 'train.sequence'"),
    ("ablation.variants=[lstm,nope]", "unknown cell variant 'nope'"),
])
def test_bad_config_stops_before_any_run(tmp_path, capsys, setting, needle):
    rc = run.main([SMOKE, "--set", f"tracking.results_dir={tmp_path}", "--set", setting])
    assert rc == 2 and needle in capsys.readouterr().err
    assert _no_runs(tmp_path)


def test_missing_corpus_stops_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STUDY_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "PROJECT_ROOT", tmp_path)

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    rc = run.main([SMOKE, "--set", f"tracking.results_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "corpus 'warpeace'" in err and "STUDY_DATA_DIR" in err
    assert _no_runs(tmp_path / "r")


def test_non_utf8_file_stops_before_any_run(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok so far \xff\xfe and then not")
    rc = run.main([SMOKE, "--set", f"tracking.results_dir={tmp_path / 'r'}",
                   "--set", f"data.path={bad}", "--set", "ablation.datasets=[]"])
    assert rc == 2 and "is not UTF-8 text" in capsys.readouterr().err
    assert _no_runs(tmp_path / "r")


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    assert run.main([SMOKE, "--dry-run", "--set", f"tracking.results_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert out.count("hash") == 6 and "warpeace_input.txt" in out
    assert _no_runs(tmp_path)


@pytest.mark.parametrize("cell", ["peephole", "lstm", "fgr", "gru", "rnn", "lstm1997"])
@pytest.mark.parametrize("inp", ["onehot", "embedding"])
def test_count_params_matches_the_built_model(cell, inp):
    from study.config import ModelConfig
    from study.model import CharLM, count_params

    m = ModelConfig(cell=cell, hidden_size=12, num_layers=3, input=inp, embedding_size=5)
    assert count_params(m, 30) == CharLM(30, m).num_params()


def test_grid_and_matched_widths_make_karpathy15s_rows():
    from study.config import load
    from study.model import count_params

    cfg = load(ROOT / "configs" / "karpathy2015.yaml")
    corpora = run.load_corpora(cfg)
    plan = run.make_plan(cfg, corpora)
    # 2 corpora × 3 cells × 3 depths × 4 widths
    assert len(plan) == 72 and len({p.hash for p in plan}) == 72
    by = {(p.dataset, p.variant, p.axes["model.num_layers"], p.axes["model.hidden_size"]): p
          for p in plan}
    for (ds, cell, L, H), p in by.items():
        if cell == "lstm":
            assert p.cfg.model.hidden_size == H  # the reference keeps its width
            continue
        ref = by[(ds, "lstm", L, H)]
        V = corpora[data.corpus_key(p.cfg.data)].vocab_size
        n, n_ref = count_params(p.cfg.model, V), count_params(ref.cfg.model, V)
        assert abs(n - n_ref) / n_ref < 0.03, (cell, L, H, n, n_ref)
    # an RNN layer has one block, an LSTM layer four: about twice as wide
    assert by[("warpeace", "rnn", 2, 512)].cfg.model.hidden_size > 900
    assert by[("warpeace", "rnn", 2, 512)].name == \
        "rnn · warpeace · num_layers=2 · hidden_size=512 · s0"


def test_probes_can_run_again_on_a_logged_run(smoke):
    from study import inspect

    client = client_for(smoke)
    exp = client.get_experiment_by_name("smoke")
    r = client.search_runs([exp.experiment_id], "tags.kind = 'train' and tags.variant = 'gru'"
                           " and tags.dataset = 'warpeace'")[0]
    uri = tracking_uri(TrackingConfig(results_dir=str(smoke)))
    before = client.get_metric_history(r.info.run_id, "time/probe_seconds")
    files = {a.path for a in client.list_artifacts(r.info.run_id, "probes/traces")}
    assert inspect.main([r.info.run_id, "--probe", "--tracking-uri", uri,
                         "--set", "probes.gru_update=charrnn"]) == 0
    after = client.get_run(r.info.run_id)
    # the same text, so the same concepts: the traces are replaced, not added to
    assert {a.path for a in client.list_artifacts(r.info.run_id, "probes/traces")} == files
    assert len(client.get_metric_history(r.info.run_id, "time/probe_seconds")) == len(before) + 1
    assert "saturation/L1_z_left_mean" in after.data.metrics  # char-rnn's update gate this time
    with pytest.raises(SystemExit, match="only probes"):
        inspect.main([r.info.run_id, "--probe", "--tracking-uri", uri, "--set",
                      "train.lr=1"])


def test_ctrl_c_leaves_the_runs_killed_with_how_to_continue(tmp_path, monkeypatch):
    import study.train

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(study.train, "train", interrupted)
    assert run.main([SMOKE, "--no-progress", "--set", f"tracking.results_dir={tmp_path}"]) \
        == 130  # 128 + SIGINT, no traceback
    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert {r.data.tags["kind"]: r.info.status for r in runs} == {"ablation": "KILLED",
                                                                  "train": "KILLED"}
    assert all("--resume" in r.data.tags["failure_reason"] for r in runs)
