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
    norm, clipped = train.clip_gradients(model, "value", 1.0)
    assert norm == pytest.approx(3.0 * math.sqrt(n)) and clipped
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


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_a_summed_loss_has_k1_times_the_mean_losss_gradient(tmp_path):
    """time_reduction sum: the gradient is that of the loss summed over the k1 new steps
    (averaged over the batch), k1 times the mean's."""
    got = {}
    for reduction in ("mean", "sum"):
        cfg = tiny_cfg(tmp_path, **{"train.time_reduction": reduction, "train.clip": "none",
                                    "train.seq_len": 12, "train.k1": 5})
        corpus = data.load_corpus(cfg.data)
        torch.manual_seed(0)
        model = CharLM(corpus.vocab_size, cfg.model).double()
        x, y = data.streams(corpus.splits["train"], 8)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # measure, do not move
        train.train_step(model, opt, x, y, None, data.windows(x.shape[0], 5, 12)[1], cfg)
        got[reduction] = _grads(model)
    for n, g in got["mean"].items():
        torch.testing.assert_close(got["sum"][n], 5 * g, rtol=1e-12, atol=1e-14)


def test_sgd_with_momentum_and_a_summed_loss_trains(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"train.optimizer": "sgd", "train.momentum": 0.9,
                                "train.time_reduction": "sum", "train.lr": 0.05,
                                "train.clip": "norm", "train.clip_value": 5.0,
                                "train.epochs": 6})
    res = train.train(cfg, data.load_corpus(cfg.data), progress=False)
    assert res.status == "finished"
    assert res.history[-1]["train_nats_per_char"] < res.history[0]["train_nats_per_char"] - 1


def test_an_unclipped_sgd_run_diverges_where_the_clipped_one_learns(tmp_path):
    """Pascanu13's case, small and deterministic: plain SGD on the summed loss at lr 2.
    Without clipping the first epoch's loss passes 3 × the initial; norm clipping at 1
    keeps every update to length ≤ 2 and the same run learns the sentence."""
    runs = {}
    for clip in ("none", "norm"):
        cfg = tiny_cfg(tmp_path, **{"train.optimizer": "sgd", "train.time_reduction": "sum",
                                    "train.lr": 2.0, "train.clip": clip,
                                    "train.clip_value": 1.0, "train.epochs": 5})
        runs[clip] = train.train(cfg, data.load_corpus(cfg.data), progress=False)
    assert runs["none"].status == "failed" and "initial" in runs["none"].reason
    assert runs["norm"].status == "finished"
    assert runs["norm"].history[-1]["train_nats_per_char"] < 1.0
    assert all(h["clip_rate"] == 1.0 for h in runs["norm"].history)  # every update clipped


@pytest.mark.parametrize("clip", ["norm", "value", "preact"])
def test_the_clip_rate_is_0_without_clipping_and_1_when_the_threshold_goes_to_0(tmp_path,
                                                                                  clip):
    rates = {}
    for mode, theta in (("none", 1.0), (clip, 1e-12)):
        cfg = tiny_cfg(tmp_path, **{"train.clip": mode, "train.clip_value": theta,
                                    "train.epochs": 1})
        res = train.train(cfg, data.load_corpus(cfg.data), progress=False)
        h = res.history[-1]
        rates[mode] = h["clip_rate"]
        assert h["grad_norm_preclip_p50"] <= h["grad_norm_preclip_p99"] \
            <= h["grad_norm_preclip_max"]
        assert h["updates"] == len(data.windows(data.streams(
            data.load_corpus(cfg.data).splits["train"], 8)[0].shape[0], 20, 20))
    assert rates == {"none": 0.0, clip: 1.0}
