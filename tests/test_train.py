"""Training behaviour: the loss starts at ln V, falls, overfits a tiny text; divergence
stops a run with its reason; the learning-rate schedule is char-rnn's."""

import math

import pytest
import torch

from study import config, data, train
from study.model import CharLM

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 60


def tiny_cfg(tmp_path, text=TEXT, **changes):
    p = tmp_path / "tiny.txt"
    p.write_text(text)
    base = {"data.path": str(p), "data.splits": [0.8, 0.1, 0.1], "model.hidden_size": 32,
            "model.num_layers": 1, "train.batch_size": 8, "train.seq_len": 20,
            "train.epochs": 2, "train.patience": None, "train.sample_chars": 0,
            "tracking.enabled": False}
    base.update(changes)
    return config.updated(config.load(None), base)


def test_initial_loss_is_about_ln_vocab(tmp_path):
    cfg = tiny_cfg(tmp_path)
    corpus = data.load_corpus(cfg.data)
    torch.manual_seed(0)
    model = CharLM(corpus.vocab_size, cfg.model)
    loss = train.evaluate(model, corpus.splits["train"], 8, 50, torch.device("cpu"))
    assert abs(loss - math.log(corpus.vocab_size)) < 0.02


@pytest.mark.parametrize("cell", ["peephole", "gru"])
def test_one_step_changes_every_parameter(tmp_path, cell):
    cfg = tiny_cfg(tmp_path, **{"model.cell": cell, "model.num_layers": 2})
    corpus = data.load_corpus(cfg.data)
    torch.manual_seed(0)
    model = CharLM(corpus.vocab_size, cfg.model)
    opt = train.make_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = data.streams(corpus.splits["train"], 8)
    train.train_step(model, opt, x, y, None, data.windows(x.shape[0], 20, 20)[0], cfg)
    for n, p in model.named_parameters():
        assert not torch.equal(before[n], p), f"{n} did not change"


def test_a_tiny_text_is_overfitted(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"train.epochs": 30, "train.lr": 1e-2})
    corpus = data.load_corpus(cfg.data)
    res = train.train(cfg, corpus, progress=False)
    assert res.status == "finished"
    first, last = res.history[0], res.history[-1]
    assert first["train_nats_per_char"] > 2.0
    assert last["train_nats_per_char"] < 0.05  # the sentence is memorised
    # the test split is the same sentence, bar each stream's first characters, which
    # start from a zero state: far below ln V ≈ 3.3
    assert res.test < 0.5


def test_divergence_stops_the_run_with_its_reason(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"train.lr": 50.0, "train.clip": "none",
                                "train.optimizer": "adam", "train.epochs": 3})
    res = train.train(cfg, data.load_corpus(cfg.data), progress=False)
    assert res.status == "failed"
    assert "initial" in res.reason or "nan" in res.reason.lower()
    assert math.isnan(res.test)


def test_learning_rate_schedule_is_char_rnns():
    cfg = config.updated(config.load(None), {"train.lr": 1.0, "train.lr_decay": 0.5,
                                             "train.lr_decay_after": 2})
    assert [train.lr_at(cfg, e) for e in (1, 2, 3, 4)] == [1.0, 1.0, 0.5, 0.25]


def test_clipping_modes(tmp_path):
    torch.manual_seed(0)
    model = CharLM(5, config.ModelConfig(hidden_size=4, num_layers=1))
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    n = sum(p.numel() for p in model.parameters())
    assert train.clip_gradients(model, "value", 1.0) == pytest.approx(3.0 * math.sqrt(n))
    assert all(p.grad.max() == 1.0 for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    train.clip_gradients(model, "norm", 2.0)
    total = math.sqrt(sum(float((p.grad ** 2).sum()) for p in model.parameters()))
    assert total == pytest.approx(2.0, rel=1e-5)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"
    train.save_checkpoint(path, a=1)

    def broken(obj, f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(train.torch, "save", broken)
    with pytest.raises(OSError):
        train.save_checkpoint(path, a=2)
    assert train.load_checkpoint(path) == {"a": 1}  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # and nothing half-written
