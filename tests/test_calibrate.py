"""study.calibrate: the `--dry-run` time estimate. Its arithmetic against what training
does (updates per epoch, epochs), a real calibration on this CPU, the cap and its
extrapolation, and the dry-run's output."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from study import calibrate, data, run, train
from study.config import load, updated

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# a tiny grid on the smoke corpora: 1-layer LSTMs of width 8
TINY = ["ablation.variants=[lstm]", "ablation.datasets=[warpeace]", "model.hidden_size=8",
        "model.num_layers=1", "train.batch_size=8", "train.seq_len=16", "train.epochs=2",
        "train.sample_chars=10"]


def tiny(tmp_path, *sets):
    cfg = load(SMOKE, [f"tracking.results_dir={tmp_path}", *TINY, *sets])
    corpora = run.load_corpora(cfg)
    return cfg, run.make_plan(cfg, corpora), corpora


def with_costs(plan, corpora, update_s=0.5, eval_char_s=1e-4):
    """The plan's shapes with costs set by hand (no timing)."""
    shapes, keys = calibrate.shapes_of(plan, corpora, "cpu")
    for s in shapes.values():
        s.update_s, s.eval_char_s, s.sample_fixed_s, s.sample_char_s = \
            update_s, eval_char_s, 0.01, 1e-3
        s.measured, s.updates_timed = True, 5
    return shapes, keys


@pytest.mark.parametrize("k1", [None, 5, 16])
def test_updates_per_epoch_are_the_ones_training_takes(tmp_path, k1):
    sets = [] if k1 is None else [f"train.k1={k1}"]
    cfg, plan, corpora = tiny(tmp_path, *sets, "ablation.datasets=[warpeace, linux]")
    shapes, keys = with_costs(plan, corpora)
    est = calibrate.project(plan, corpora, shapes, keys)
    for r in est.runs:
        corpus = corpora[data.corpus_key(r.spec.cfg.data)]
        t = r.spec.cfg.train
        x, _ = data.streams(corpus.splits["train"], t.batch_size)
        assert r.updates_per_epoch == len(data.windows(x.shape[0], t.k1 or t.seq_len,
                                                       t.seq_len))
        schedule = train._setup(r.spec.cfg, corpus)[5]  # what train() iterates over
        assert r.updates_per_epoch == len(schedule)
        assert r.train_epoch_s == pytest.approx(len(schedule) * 0.5)
        val = (len(corpus.splits["val"]) - 1) // t.batch_size * t.batch_size
        assert r.val_s == pytest.approx(val * 1e-4)
        assert r.total_s == pytest.approx(2 * (r.train_epoch_s + r.val_s + r.sample_s)
                                          + r.test_s)


def test_twice_the_epochs_is_twice_the_training_time(tmp_path):
    cfg, plan, corpora = tiny(tmp_path)
    shapes, keys = calibrate.shapes_of(plan, corpora, "cpu")
    calibrate.calibrate(list(shapes.values()), steps=2, progress=False)  # measured once
    twice = [type(s)(s.variant, s.dataset, s.seed, updated(s.cfg, {"train.epochs": 4}),
                     s.hash, s.axes) for s in plan]
    shapes2, keys2 = calibrate.shapes_of(twice, corpora, "cpu")
    assert keys2 == keys  # the epochs do not change a shape
    a = calibrate.project(plan, corpora, shapes, keys)
    b = calibrate.project(twice, corpora, shapes, keys)
    test = sum(r.test_s for r in a.runs)
    assert b.total_s - test == pytest.approx(2 * (a.total_s - test), rel=1e-12)
    assert 1.5 < b.total_s / a.total_s <= 2.0


def test_a_real_calibration_gives_positive_finite_times(tmp_path):
    cfg, plan, corpora = tiny(tmp_path, "ablation.datasets=[warpeace, linux]")
    est = calibrate.estimate(plan, corpora, device="cpu", steps=2, progress=False)
    assert len(est.shapes) == 2 and len(est.measured) == 2  # the two vocabularies
    for s in est.shapes:
        for v in (s.update_s, s.eval_char_s, s.sample_fixed_s):
            assert math.isfinite(v) and v > 0, s
        assert math.isfinite(s.sample_char_s) and s.sample_char_s >= 0
        assert s.updates_timed >= 1
    for r in est.runs:
        assert math.isfinite(r.total_s) and r.total_s > 0
    assert 0 < est.wall_s == pytest.approx(est.total_s) and est.calibration_s > 0
    assert est.summary().startswith("estimated wall time on cpu (")


def test_time_up_the_rest_is_extrapolated_by_flops(tmp_path):
    cfg, plan, corpora = tiny(tmp_path, "ablation.grid={model.hidden_size: [8, 32]}")
    est = calibrate.estimate(plan, corpora, device="cpu", steps=2, progress=False,
                             seconds=0)
    small, big = sorted(est.shapes, key=lambda s: s.cfg.model.hidden_size)
    assert small.measured and not big.measured and est.capped  # cheapest first
    ratio = big.flops_per_update / small.flops_per_update
    assert ratio > 1 and big.update_s == pytest.approx(small.update_s * ratio)
    assert big.source == "fitted to 1 measured lstm shape"
    text = "\n".join(est.lines())
    assert "1 of 2 shapes (1 extrapolated by FLOPs and steps)" in text
    assert "=  ~" in text or "= ~" in text


def test_what_shares_a_shape(tmp_path):
    cfg, plan, corpora = tiny(tmp_path)
    V = corpora[data.corpus_key(cfg.data)].vocab_size
    key = calibrate.shape_key(plan[0].cfg, V, torch.device("cpu"))

    def k(changes, vocab=V):
        return calibrate.shape_key(updated(plan[0].cfg, changes), vocab,
                                   torch.device("cpu"))

    for same in ({"train.seed": 3}, {"train.lr": 1.0}, {"train.epochs": 9},
                 {"train.k1": 16}, {"train.patience": None}, {"model.forget_bias": 1.0}):
        assert k(same) == key, same
    for other in ({"model.hidden_size": 9}, {"train.batch_size": 4}, {"train.k1": 4},
                  {"train.clip": "norm"}, {"model.cell": "gru"}, {"train.threads": 1}):
        assert k(other) != key, other
    assert k({}, V + 1) != key


def test_an_empty_plan_needs_no_calibration():
    est = calibrate.estimate([], {}, progress=False)
    assert est.runs == [] and est.total_s == 0 and est.calibration_s == 0
    assert est.lines() == ["estimated wall time: nothing to estimate (the plan has no runs)"]


@pytest.mark.parametrize("seconds,text", [(5e-6, "5 µs"), (0.0123, "12.3 ms"), (41.5, "41.5 s"),
                                          (600, "10.0 min"), (41.5 * 3600, "41.5 h"),
                                          (100 * 3600, "100.0 h (4.2 days)")])
def test_durations_read_in_their_unit(seconds, text):
    assert calibrate.duration(seconds) == text


ESTIMATE = re.compile(r"estimated wall time on cpu \(\d+ threads?\): at most [\d.]+ (ms|s|min|h) "
                      r"for 2 runs \(2 epochs each; calibrated \d{4}-\d\d-\d\d from 2 shapes, "
                      r"\d+(–\d+)? updates? each; probes not included\)")


def test_dry_run_prints_the_estimate(tmp_path, capsys):
    sets = [x for s in [f"tracking.results_dir={tmp_path}", *TINY,
                        "ablation.datasets=[warpeace, linux]"] for x in ("--set", s)]
    assert run.main([SMOKE, "--dry-run", *sets]) == 0
    out, err = capsys.readouterr()
    assert out.count("hash") == 2
    assert ESTIMATE.search(out), out
    assert "lstm · warpeace · s0" in out.split("estimated time per run")[1]
    assert "probes and the error analysis" in out
    assert err.count("calibrating ") == 2  # a progress line per shape

    assert run.main([SMOKE, "--dry-run", "--no-estimate", *sets]) == 0
    out, err = capsys.readouterr()
    assert out.count("hash") == 2 and "estimated" not in out and "calibrating" not in err


def test_the_plan_printer_skips_the_estimate_of_an_empty_plan(tmp_path, capsys):
    # the config's checks refuse an empty grid axis, so no command makes one: a guard
    cfg, plan, corpora = tiny(tmp_path)
    run.print_plan(cfg, [], corpora)
    out, err = capsys.readouterr()
    assert "no time estimate: the plan has no runs" in out and "calibrating" not in err


def test_the_fit_finds_overhead_and_flop_rate_and_ignores_a_busy_moment():
    a, b = 2e-4, 5e-10  # seconds per step × layer, seconds per FLOP
    points = [(x1, x2, a * x1 + b * x2) for x1, x2 in
              [(100, 1e8), (200, 4e8), (300, 2e9), (100, 5e9), (300, 3e8)]]
    assert calibrate.fit(points) == pytest.approx((a, b), rel=1e-6)
    slowed = [*points, (200, 1e9, 3 * (a * 200 + b * 1e9))]  # measured while the CPU was busy
    assert calibrate.fit(slowed) == pytest.approx((a, b), rel=1e-6)
    assert calibrate.fit([(10, 1e6, 2.0)]) == (0.0, 2e-6)  # one point: by FLOPs alone
    assert calibrate.fit([]) is None


def test_a_measurement_far_above_its_cells_others_is_looked_at_again(tmp_path):
    cfg, plan, corpora = tiny(tmp_path, "ablation.grid={model.hidden_size: [8, 16, 32, 64]}")
    shapes, keys = with_costs(plan, corpora)
    for s in shapes.values():
        x1, x2 = calibrate.COSTS["update_s"](s)
        s.update_s = 1e-4 * x1 + 1e-9 * x2
    busy = max(shapes.values(), key=lambda s: s.cfg.model.hidden_size == 16)
    busy.update_s *= 3
    suspects = calibrate._suspects(list(shapes.values()))
    assert [s for s, _ in suspects] == [busy]
    assert suspects[0][1].update_s == pytest.approx(busy.update_s / 3, rel=1e-6)
