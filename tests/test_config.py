"""The config tree: strict loading, overrides, clear errors, hashing."""

from pathlib import Path

import pytest

from study import config
from study.config import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    cfg = config.load(CONFIGS / name)
    assert isinstance(cfg, config.Config)


def test_defaults_are_karpathy15s_char_rnn():
    cfg = config.load(None)
    t = cfg.train
    assert (t.optimizer, t.lr, t.rmsprop_alpha, t.batch_size, t.seq_len) == \
        ("rmsprop", 2e-3, 0.95, 100, 100)
    assert (t.lr_decay, t.lr_decay_after, t.clip, t.clip_value) == (0.95, 10, "value", 5.0)
    assert cfg.model.init_range == 0.08 and cfg.model.forget_bias == 0.0


def test_unknown_key_names_the_key_the_file_and_the_valid_ones(tmp_path):
    p = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert str(p) in msg and "'train.lrr'" in msg and "did you mean 'lr'" in msg
    assert "optimizer" in msg and "seq_len" in msg  # the valid keys of the section


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*did you mean 'train'"):
        config.load(write(tmp_path, "trian: {}\n"))


@pytest.mark.parametrize("text,needle", [
    ("train:\n  clip: sometimes\n", "choose one of: none, norm, value"),
    ("train:\n  lr: -1\n", "train.lr = -1.0 is out of range; allowed: 0.0 < lr"),
    ("model:\n  dropout: 1.0\n", "0.0 <= dropout < 1.0"),
    ("train:\n  batch_size: 2.5\n", "train.batch_size = 2.5 is not a valid int"),
    ("train:\n  seq_len: 10\n  k1: 20\n", "k1 = 20 must be <= train.seq_len = 10"),
    ("model:\n  cell: lstn\n", "unknown cell variant 'lstn'; known variants: peephole, lstm"),
    ("ablation:\n  variants: [gru, nope]\n", "unknown cell variant 'nope'"),
    ("ablation:\n  datasets: [shakespeare]\n", "unknown corpus 'shakespeare'; known corpora: "
                                               "warpeace, linux"),
    ("data:\n  splits: [0.5, 0.5, 0.5]\n", "must be three fractions"),
    ("model:\n  truncated_gradient: true\n", "cells with one: lstm1997"),
])
def test_bad_values_are_rejected_with_what_is_allowed(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert needle in str(e.value) and str(p) in str(e.value)


def test_overrides_parse_like_yaml_and_accept_1e_minus_3(tmp_path):
    cfg = config.load(write(tmp_path, "train:\n  lr: 0.1\n"),
                      ["train.lr=1e-3", "model.cell=gru", "ablation.seeds=[1, 2]",
                       "train.patience=null"])
    assert cfg.train.lr == 1e-3 and cfg.model.cell == "gru"
    assert cfg.ablation.seeds == [1, 2] and cfg.train.patience is None
    with pytest.raises(ConfigError, match="--set"):
        config.load(None, ["train.lr"])
    with pytest.raises(ConfigError, match=r"unknown key 'train.nope'"):
        config.load(None, ["train.nope=1"])


def test_updated_and_run_hash():
    cfg = config.load(None)
    gru = config.updated(cfg, {"model.cell": "gru"})
    assert gru.model.cell == "gru" and cfg.model.cell == "lstm"
    assert config.run_hash(gru) != config.run_hash(cfg)
    # where it is logged and how many threads it uses do not change what it computes
    assert config.run_hash(config.updated(cfg, {"tracking.experiment": "x",
                                                "train.threads": 1})) == config.run_hash(cfg)
    flat = config.flatten(config.to_dict(cfg))
    assert flat["train.lr"] == 2e-3 and flat["model.cell"] == "lstm"
