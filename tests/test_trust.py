"""What a careful user tries: bad values that must stop before anything is written, signals,
two commands on one store, and a report that must not touch what it did not write."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analyses import report
from study import run
from study.config import TrackingConfig
from study.tracking import tracking_uri

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# one variant on one corpus, no probes: the cheapest real run
TINY = ["--no-progress", "--set", "ablation.variants=[lstm]", "--set",
        "ablation.datasets=[warpeace]", "--set", "probes.enabled=false"]
PATH = ["--set", "ablation.datasets=[]"]  # with data.path: one file, no named corpora


def client_for(results: Path) -> MlflowClient:
    return MlflowClient(tracking_uri(TrackingConfig(results_dir=str(results))))


def runs_of(results: Path, kind: str | None = None) -> list:
    client = client_for(results)
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return [r for r in runs if kind is None or r.data.tags.get("kind") == kind]


def nothing_written(results: Path) -> bool:
    return not results.exists() or not any(results.iterdir())


# ---------------------------------------------------------------------------------------
# bad values: one clear error each, nothing written


BAD_INPUTS = {  # label: (arguments after the config, what the error must say)
    "lr NaN": (["--set", "train.lr=.nan"], "train.lr = nan is not a finite number"),
    "epochs inf": (["--set", "train.epochs=.inf"], "train.epochs = inf is not a valid int"),
    "clip NaN": (["--set", "train.clip_value=.nan"], "clip_value = nan is not a finite"),
    "YAML in --set": (["--set", "train.lr=[1,"], "is not valid YAML"),
    "zero test split": (["--set", "data.splits=[0.9,0.1,0]"], "each > 0"),
    "experiment ..": (["--set", "tracking.experiment=../../escaped"], "is not a usable name"),
    "name with /": (["--set", "name=a/b"], "name = 'a/b' is not a usable name"),
    "unknown key": (["--set", "train.sequence=5"], "unknown key 'train.sequence'"),
    "unknown variant": (["--set", "ablation.variants=[lstm,nope]"], "unknown cell variant"),
    "unknown corpus": (["--set", "ablation.datasets=[shakespeare]"], "unknown corpus"),
    "path a folder": (["--set", "data.path={tmp}", *PATH], "is a directory, not a file"),
    "path missing": (["--set", "data.path={tmp}/nope.txt", *PATH], "does not exist"),
    "not UTF-8": (["--set", "data.path={tmp}/bad.txt", *PATH], "is not UTF-8 text"),
    "empty file": (["--set", "data.path={tmp}/empty.txt", *PATH], "is empty"),
    "too small": (["--set", "data.path={tmp}/tiny.txt", *PATH], "too few for train.batch"),
    "too small, dry": (["--set", "data.path={tmp}/tiny.txt", *PATH, "--dry-run"], "too few"),
    "--workers 0": (["--workers", "0"], "--workers 0: need at least 1"),
    "batch 0": (["--set", "train.batch_size=0"], "train.batch_size = 0 is out of range"),
    "k1 > k2": (["--set", "train.k1=999"], "must be <= train.seq_len"),
    "left >= right": (["--set", "probes.left=0.95"], "must be below probes.right"),
    "lr < 0": (["--set", "train.lr=-1"], "allowed: 0.0 < lr"),
    "dropout 1": (["--set", "model.dropout=1.0"], "0.0 <= dropout < 1.0"),
    "max_chars 10": (["--set", "data.max_chars=10"], "data.max_chars = 10 is out of range"),
    "error flow": (["--set", "probes.error_flow_q=5000"], "the probes' error flow needs"),
    "cuda": (["--set", "train.device=cuda"], "no CUDA device"),
    "truncated grad": (["--set", "model.truncated_gradient=true"], "cells with one"),
    "sweep grid": (["--set", "sweep.enabled=true", "--set", "ablation.variants=[]", "--set",
                    "ablation.datasets=[]", "--set", "ablation.seeds=[]", "--set",
                    "sweep.sampler=grid", "--set", "sweep.grid_k2=[5000]"], "outside k2_min"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inputs")
    (tmp / "bad.txt").write_bytes(b"ok so far \xff\xfe and then not")
    (tmp / "empty.txt").write_text("")
    (tmp / "tiny.txt").write_text("a b c d\n" * 25)
    return tmp


@pytest.mark.parametrize("label", list(BAD_INPUTS))
def test_bad_inputs_stop_with_one_clear_error_and_write_nothing(tmp_path, capsys, bad_files,
                                                                label):
    extra, needle = BAD_INPUTS[label]
    extra = [a.replace("{tmp}", str(bad_files)) for a in extra]
    results = tmp_path / "r"
    assert run.main([SMOKE, "--no-progress", "--set", f"tracking.results_dir={results}",
                     *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert sum(line.startswith("error") for line in err.splitlines()) == 1, err
    # nothing but the corpus cache (a copy of the input, keyed by its checksum)
    assert not results.exists() or {p.name for p in results.iterdir()} <= {"cache"}
    assert not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("text,needle", [(None, "config file not found"),
                                          ("train: [1, \n", "not valid YAML")])
def test_a_missing_or_broken_config_file_is_one_clear_error(tmp_path, capsys, text, needle):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    assert run.main([str(path), "--set", f"tracking.results_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.startswith("error: ")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra,needle", [
    # 200 characters: the val split's 10 cannot fill 16 streams
    ([], "the val split has 10 characters, too few for train.batch_size = 16"),
    (["--dry-run"], "too few for train.batch_size = 16"),
])
def test_too_little_text_is_refused_before_any_run(tmp_path, capsys, extra, needle):
    text = tmp_path / "tiny.txt"
    text.write_text("a b c d\n" * 25)
    results = tmp_path / "r"
    rc = run.main([SMOKE, "--set", f"tracking.results_dir={results}", "--set",
                   f"data.path={text}", "--set", "ablation.datasets=[]", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Lower train.batch_size" in err, err
    assert not (results / "mlflow.db").exists()


def test_a_val_split_too_short_for_the_error_flow_is_refused(tmp_path, capsys):
    text = tmp_path / "small.txt"
    text.write_text("the cat sat on the mat.\n" * 120)  # val split: 288 characters
    rc = run.main([SMOKE, "--set", f"tracking.results_dir={tmp_path / 'r'}", "--set",
                   f"data.path={text}", "--set", "ablation.datasets=[]", "--set",
                   "probes.error_flow_q=400", "--dry-run"])
    assert rc == 2 and "probes.error_flow_q" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# signals and concurrency (real processes)


def _cli(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "study.run", SMOKE, "--set",
            f"tracking.results_dir={results}", *TINY, *extra]


def test_sigterm_ends_the_runs_killed_and_resume_clears_the_reason(tmp_path):
    results = tmp_path / "r"
    cmd = _cli(results, "--set", "train.epochs=3")
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # once an epoch is checkpointed, stop it as `timeout` would
        lines.append(line)
        if line.startswith("epoch   1"):
            deadline = time.time() + 60
            while not list(results.glob("checkpoints/smoke/*/last.pt")) and \
                    time.time() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            break
    err = "".join(lines) + proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert "Traceback" not in err and "--resume" in err, err
    runs = runs_of(results)
    assert {r.data.tags["kind"]: r.info.status for r in runs} == {"ablation": "KILLED",
                                                                  "train": "KILLED"}
    assert all("--resume" in r.data.tags["failure_reason"] for r in runs)
    done = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    after = runs_of(results)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in runs)
    for r in after:  # the same runs, finished, no longer saying "interrupted"
        assert r.info.status == "FINISHED" and "failure_reason" not in r.data.tags


def test_two_identical_ablations_at_once_train_every_run_once(tmp_path):
    results = tmp_path / "fresh"  # a fresh store: its creation races too
    cmd = _cli(results, "--set", "ablation.variants=[lstm,gru]", "--set", "train.epochs=1")
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "superseded" not in err and "Traceback" not in err
        assert out.count("finished") == 2, out  # each prints the whole grid
    train = runs_of(results, "train")
    assert sorted(r.data.tags["variant"] for r in train) == ["gru", "lstm"]  # once each
    assert all(r.info.status == "FINISHED" for r in train)
    (parent,) = runs_of(results, "ablation")
    assert parent.info.status == "FINISHED" and parent.data.tags["failed_runs"] == "0"
    # each command trained some and read the rest back: between them, every run once
    trained_here = sum(out.count("by another worker") for out, _ in outs)
    assert trained_here == 2


# ---------------------------------------------------------------------------------------
# the report


def test_report_on_a_missing_or_empty_store_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"
    assert report.main(["--tracking-uri", missing]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists() and not (tmp_path / "results").exists()
    empty = tmp_path / "empty"
    client_for(empty).search_experiments()  # an existing store with no runs
    before = sorted(p.name for p in empty.iterdir())
    assert report.main(["--tracking-uri", tracking_uri(TrackingConfig(
        results_dir=str(empty)))]) == 2
    assert "no runs at" in capsys.readouterr().err
    assert sorted(p.name for p in empty.iterdir()) == before
    assert client_for(empty).get_experiment_by_name("report") is None
    assert not (tmp_path / "results").exists()


def test_report_replaces_only_its_own_files_and_writes_beside_its_store(smoke, tmp_path,
                                                                        capsys, monkeypatch):
    store = tmp_path / "store"  # a copy, so that the report run logged here stays here
    shutil.copytree(smoke, store, ignore=shutil.ignore_patterns("checkpoints", "cache"))
    uri = tracking_uri(TrackingConfig(results_dir=str(store)))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert report.main(["--tracking-uri", uri, "--experiment", "smoke"]) == 0
    out = store / "report"  # beside the store, not under the current folder
    assert (out / "report.md").is_file() and list(cwd.iterdir()) == []
    assert (store / "mlartifacts" / "report").is_dir()
    written = json.loads((out / ".analyses-report").read_text())
    assert "report.md" in written and "variants.png" in written
    (out / "my notes.txt").write_text("mine")
    os.remove(out / "variants.pdf")
    assert report.main(["--tracking-uri", uri, "--experiment", "smoke", "--no-log"]) == 0
    assert (out / "my notes.txt").read_text() == "mine"  # a foreign file survives
    assert (out / "variants.pdf").is_file()
    assert "my notes.txt" not in json.loads((out / ".analyses-report").read_text())
    foreign = tmp_path / "checkout"
    foreign.mkdir()
    (foreign / "README.md").write_text("keep me")
    assert report.main(["--tracking-uri", uri, "--experiment", "smoke", "--no-log",
                        "--out", str(foreign)]) == 2
    assert "not written by analyses.report" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["README.md"]


def test_skipped_runs_are_not_counted_as_failed(smoke):
    assert run.main([SMOKE, "--set", f"tracking.results_dir={smoke}", "--no-progress"]) == 0
    (parent,) = runs_of(smoke, "ablation")
    assert parent.data.tags["failed_runs"] == "0" and parent.data.tags["runs"] == "6"


def test_waiting_for_another_worker_is_bounded_by_its_liveness(tmp_path):
    """A job claimed by a worker that is gone is queued again, not waited for forever."""
    from study.sweep.queue import GridQueue

    url = f"journal:{tmp_path / 'q.journal'}"
    q = GridQueue(url, "x")
    with q.lock():
        q.fill([{"hash": "h1", "name": "a", "config": {}, "axes": {}, "parent": None,
                 "force": False}], skip=set())
    job = q.take()
    assert job is not None and job.hash == "h1" and q.running({"h1"}) == {"h1"}
    job.trial.set_user_attr("worker", "elsewhere:1:1")  # another machine's worker ...
    job.trial.set_user_attr("heartbeat", time.time() - 3600)  # ... silent for an hour
    assert q.running({"h1"}) == set()
    again = q.take()
    assert again is not None and again.hash == "h1"  # queued again once, taken here
    assert q.take() is None


def test_a_failing_probe_fails_the_run_visibly_and_resume_probes_again(tmp_path, capsys,
                                                                      monkeypatch):
    from study.probes import figures

    def broken(*a, **k):
        raise IndexError("index 80 is out of bounds")

    results = tmp_path / "r"
    args = [SMOKE, "--set", f"tracking.results_dir={results}", "--no-progress", "--set",
            "ablation.variants=[lstm]", "--set", "ablation.datasets=[linux]", "--set",
            "train.epochs=1"]
    monkeypatch.setattr(figures, "trace_png", broken)
    assert run.main(args) == 1
    err = capsys.readouterr().err
    assert "probes failed" in err and "traces: IndexError" in err  # summary and the end
    (child,) = runs_of(results, "train")
    assert child.info.status == "FAILED"
    assert child.data.tags["failure_reason"].startswith("probes failed after training")
    assert "--resume" in child.data.tags["failure_reason"]
    client = client_for(results)
    arts = {a.path for a in client.list_artifacts(child.info.run_id, "probes")}
    assert "probes/saturation.csv" in arts and "probes/error_flow.csv" in arts  # the rest
    assert "loss/test_nats_per_char" in child.data.metrics  # training itself finished
    (parent,) = runs_of(results, "ablation")
    assert parent.data.tags["failed_runs"] == "1"
    monkeypatch.undo()
    assert run.main([*args, "--resume"]) == 0  # probes again, without retraining
    assert "resuming" in capsys.readouterr().err
    (after,) = runs_of(results, "train")
    assert after.info.run_id == child.info.run_id and after.info.status == "FINISHED"
    assert "failure_reason" not in after.data.tags
    assert len(client.get_metric_history(child.info.run_id, "loss/val_nats_per_char")) == 1
    assert any(a.path.endswith(".png") for a in
               client.list_artifacts(child.info.run_id, "probes/traces"))


def test_a_dead_worker_that_is_not_yet_reaped_counts_as_gone():
    """A killed worker stays a zombie while its parent waits on another one; its trial must
    still be recovered (found against a real PostgreSQL in test_scaleout)."""
    import socket
    from types import SimpleNamespace

    from study.sweep.storage import _start_ticks, is_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ticks = _start_ticks(child.pid)
        trial = SimpleNamespace(user_attrs={"worker": f"{socket.gethostname()}:{child.pid}:"
                                                      f"{ticks}"})
        assert ticks is not None and is_alive(trial)
        child.kill()
        deadline = time.time() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] \
                != "Z" and time.time() < deadline:  # dead, not reaped: a zombie
            time.sleep(0.01)
        assert not is_alive(trial)
    finally:
        child.kill()
        child.wait()


def test_workers_take_the_ablation_grid_from_the_queue(tmp_path):
    results = tmp_path / "r"
    done = subprocess.run(_cli(results, "--set", "ablation.variants=[lstm,gru,rnn]", "--set",
                               "train.epochs=1", "--workers", "2"),
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    train = runs_of(results, "train")
    assert sorted(r.data.tags["variant"] for r in train) == ["gru", "lstm", "rnn"]
    assert all(r.info.status == "FINISHED" for r in train)
    (parent,) = runs_of(results, "ablation")
    assert {r.data.tags["mlflow.parentRunId"] for r in train} == {parent.info.run_id}
    assert done.stdout.count("finished") == 3
