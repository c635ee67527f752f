"""Checkpoints hold tensors and plain types only: a pickle that would run code is refused
with one clear error (by --resume and by study.inspect), a damaged one names its file and
the fix, the RNG states survive the round trip exactly, and study.inspect reads a logged
run without leaving files behind or creating a store at a mistyped URI."""

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from study import config, data, files, inspect, train
from study.model import CharLM
from tests.test_train import tiny_cfg as train_tiny_cfg

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 60


class RunsCode:
    """Unpickling this calls Path(marker).touch(): a stand-in for any shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file whose unpickling creates `marker`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": RunsCode(marker), "config": {}, "vocab": "ab", "epoch": 1}, path)
    return path


def tiny_cfg(tmp_path, **changes):
    """test_train's tiny config, smaller still: one epoch of a 16-unit layer."""
    return train_tiny_cfg(tmp_path, **{"model.hidden_size": 16, "train.epochs": 1, **changes})


@pytest.fixture
def store(tmp_path):
    """A fresh SQLite MLflow store with one experiment: (client, experiment id, uri)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("t", (tmp_path / "artifacts").as_uri())
    return client, exp, uri


def logged_run(store, checkpoint: Path | None) -> str:
    """A run of the store with `checkpoint` logged as its checkpoint/best.pt."""
    client, exp, _ = store
    run_id = client.create_run(exp).info.run_id
    if checkpoint is not None:
        assert checkpoint.name == "best.pt"
        client.log_artifact(run_id, str(checkpoint), "checkpoint")
    return run_id


def error_line(err: str) -> str:
    """The one `error: ...` line study.inspect printed (MLflow's progress bars aside)."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_malicious_file_does_run_code_when_fully_unpickled(tmp_path):
    marker = tmp_path / "marker"
    torch.load(malicious(tmp_path / "best.pt", marker), weights_only=False)
    assert marker.exists()  # so its absence below means it was refused, not harmless


def test_inspect_refuses_a_logged_checkpoint_that_would_run_code(store, tmp_path, capsys):
    marker = tmp_path / "marker"
    run_id = logged_run(store, malicious(tmp_path / "upload" / "best.pt", marker))
    rc = inspect.main([run_id, "--tracking-uri", store[2], "--out", str(tmp_path / "out")])
    err = error_line(capsys.readouterr().err)
    assert rc == 2
    assert f"checkpoint/best.pt of run {run_id}" in err
    assert "not a plain-tensor checkpoint and will not be executed" in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_last_pt_that_would_run_code(tmp_path):
    marker = tmp_path / "marker"
    last = malicious(tmp_path / "ck" / "last.pt", marker)
    with pytest.raises(train.CheckpointError) as e:
        train.load_checkpoint(last)
    msg = str(e.value)
    assert str(last) in msg and "not a plain-tensor checkpoint and will not be executed" in msg
    assert not marker.exists()
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(train.CheckpointError, match="will not be executed"):
        train.train(cfg, data.load_corpus(cfg.data), ckpt_dir=last.parent, resume=True,
                    progress=False)
    assert not marker.exists()


def test_a_real_checkpoint_is_plain_tensors_and_restores_the_rng_exactly(tmp_path):
    cfg = tiny_cfg(tmp_path)
    res = train.train(cfg, data.load_corpus(cfg.data), ckpt_dir=tmp_path / "ck",
                      progress=False)
    assert res.status == "finished"
    for name in ("last.pt", "best.pt"):  # everything in them loads without pickled objects
        ck = torch.load(tmp_path / "ck" / name, map_location="cpu", weights_only=True)
    last = train.load_checkpoint(tmp_path / "ck" / "last.pt", train.LAST_KEYS)
    assert last["optimizer"]["state"] and last["history"][0]["epoch"] == 1
    assert ck["vocab"] == last["vocab"]

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    train.save_checkpoint(tmp_path / "rng.pt", rng=train.rng_states())

    def draws():
        return (torch.rand(4).tolist(), np.random.standard_normal(3).tolist(),
                np.random.randint(0, 1 << 30, 3).tolist(), [random.random() for _ in range(3)])

    expected = draws()
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    assert draws() != expected
    s = torch.load(tmp_path / "rng.pt", map_location="cpu", weights_only=True)["rng"]
    train.set_rng_states(s)
    assert draws() == expected


@pytest.mark.parametrize("damage,needle", [
    ("garbage", "truncated or corrupt"),
    ("truncated", "truncated or corrupt"),
    ("empty", "truncated or corrupt"),
    ("tensor", "is not a checkpoint"),
    ("foreign dict", "lacks"),
])
def test_a_damaged_last_pt_names_the_file_and_the_fix(tmp_path, damage, needle):
    last = tmp_path / "ck" / "last.pt"
    train.save_checkpoint(last, model={"w": torch.zeros(1000)}, epoch=1)
    good = last.read_bytes()
    if damage == "garbage":
        last.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        last.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "tensor":
        torch.save(torch.zeros(3), last)
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(train.CheckpointError) as e:
        train.train(cfg, data.load_corpus(cfg.data), ckpt_dir=last.parent, resume=True,
                    progress=False)
    msg = str(e.value)
    assert str(last) in msg and needle in msg
    assert "delete it to retrain this run from the start, or run without --resume" in msg


def test_atomic_save_fsyncs_before_the_rename(tmp_path, monkeypatch):
    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (calls.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(files.os, "replace",
                        lambda a, b: (calls.append("replace"), replace(a, b))[1])
    files.atomic_save({"a": torch.ones(2)}, tmp_path / "x.pt")
    assert calls == ["fsync", "replace"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def _logged_model_run(store, tmp_path) -> str:
    """A run with a genuine (tiny) best.pt, as study.run logs it."""
    cfg = tiny_cfg(tmp_path)
    vocab = "".join(sorted(set(TEXT)))
    torch.manual_seed(0)
    model = CharLM(len(vocab), cfg.model)
    best = tmp_path / "upload" / "best.pt"
    train.save_checkpoint(best, model=model.state_dict(), config=config.to_dict(cfg),
                          vocab=vocab, epoch=1, val_nats_per_char=1.0)
    return logged_run(store, best)


def test_inspect_leaves_no_download_in_the_temp_folder(store, tmp_path, monkeypatch):
    import tempfile

    run_id = _logged_model_run(store, tmp_path)
    text = tmp_path / "t.txt"
    text.write_text(TEXT[:400])
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    assert inspect.main([run_id, "--tracking-uri", store[2], "--out", str(tmp_path / "out"),
                         "--unit", "1:0", "--text", str(text)]) == 0
    assert (tmp_path / "out" / "unit_L1c0.html").is_file()
    assert list(systmp.iterdir()) == []


@pytest.mark.parametrize("where", ["missing folder", "missing file"])
@pytest.mark.parametrize("probe", [False, True])
def test_inspect_at_a_mistyped_store_creates_nothing(tmp_path, capsys, where, probe):
    folder = tmp_path / "typo"
    if where == "missing file":
        folder.mkdir()
    uri = f"sqlite:///{folder}/mlflow.db"
    rc = inspect.main(["0123abcd", "--tracking-uri", uri, *(["--probe"] if probe else [])])
    err = error_line(capsys.readouterr().err)
    assert rc == 2
    assert f"no MLflow store at {uri}" in err and "--tracking-uri" in err
    assert list(tmp_path.iterdir()) == ([folder] if where == "missing file" else [])
    assert not folder.exists() or list(folder.iterdir()) == []


def test_inspect_of_an_unknown_run_or_a_run_without_checkpoint_says_so(store, capsys):
    rc = inspect.main(["0123abcd", "--tracking-uri", store[2]])
    err = error_line(capsys.readouterr().err)
    assert rc == 2
    assert "no run 0123abcd" in err and store[2] in err
    run_id = logged_run(store, None)
    rc = inspect.main([run_id, "--tracking-uri", store[2]])
    err = error_line(capsys.readouterr().err)
    assert rc == 2
    assert f"run {run_id}: no checkpoint/best.pt artifact" in err
