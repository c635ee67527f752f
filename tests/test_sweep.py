"""Optuna sweeps end to end on a tiny text: parallel workers, divergence, pruning, a killed
worker, duplicates; trials read back from Optuna and MLflow."""

import math
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from study import run
from study.config import TrackingConfig
from study.sweep import open_storage, param_key
from study.sweep import storage as storage_mod
from study.sweep.storage import STALE_AFTER_S, heartbeat, recover
from study.tracking import tracking_uri
from tests.test_probes import synthetic_prose

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, sweep: dict, train: dict | None = None, name="s") -> Path:
    text = tmp_path / "prose.txt"
    if not text.exists():
        text.write_text(synthetic_prose(600, seed=3))
    cfg = {
        "name": name,
        "data": {"path": str(text), "splits": [0.8, 0.1, 0.1]},
        "model": {"cell": "lstm", "hidden_size": 16, "num_layers": 1},
        "train": {"batch_size": 8, "epochs": 2, "patience": None, "sample_chars": 0,
                  **(train or {})},
        "probes": {"enabled": False},
        "tracking": {"experiment": "sweeps", "results_dir": str(tmp_path / "results")},
        "sweep": {"enabled": True, "pruner": "none", **sweep},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def study_of(tmp_path, name="s") -> optuna.Study:
    url = f"journal:{tmp_path / 'results' / 'optuna' / f'{name}.journal'}"
    return optuna.load_study(study_name=name, storage=open_storage(url))


def mlflow_runs(tmp_path, kind):
    client = MlflowClient(tracking_uri(TrackingConfig(results_dir=str(tmp_path / "results"))))
    exp = client.get_experiment_by_name("sweeps")
    return client, client.search_runs([exp.experiment_id], f"tags.kind = '{kind}'")


GRID4 = {"sampler": "grid", "grid_k2": [8, 16], "grid_clip": ["none", "norm:1"],
         "grid_k1_fraction": [1.0], "k2_min": 4, "k2_max": 64}


def test_two_workers_complete_the_grid_once_each(tmp_path):
    cfg = write_config(tmp_path, {**GRID4, "trials": 4})
    assert run.main([str(cfg), "--workers", "2", "--no-progress"]) == 0
    trials = study_of(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # none lost
    keys = {param_key(t.params) for t in trials}
    assert len(keys) == 4  # none duplicated: each grid point exactly once
    assert {t.params["k2"] for t in trials} == {8, 16}
    assert len({t.user_attrs["worker"] for t in trials}) >= 1
    client, parents = mlflow_runs(tmp_path, "study")
    _, children = mlflow_runs(tmp_path, "trial")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert sorted(int(c.data.tags["trial_number"]) for c in children) == [0, 1, 2, 3]
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.data.tags["trial_state"] == "COMPLETE" and c.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(c.info.run_id,
                                                              "loss/val_nats_per_char")]
        assert steps == [1, 2]
        assert c.data.params["train.seq_len"] == c.data.tags["k2"]
        assert not [k for k in c.data.params if k.startswith(("sweep.", "ablation."))]
        # the legend names the trial by what it tried; its best weights are kept
        assert c.info.run_name == f"k2={c.data.tags['k2']} · clip={c.data.tags['clip']}"
        ck = {a.path for a in client.list_artifacts(c.info.run_id, "checkpoint")}
        assert ck == {"checkpoint/best.pt"} and c.outputs.model_outputs
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/trials.csv", "study/optimization_history.png",
            "study/bptt_clip_heatmap.png"} <= arts
    assert "loss/best_val_nats_per_char" in parent.data.metrics
    assert parent.data.metrics["study/trials_complete"] == 4
    p = parent.data.params  # the search space and the shared config, not one trial's values
    assert p["sweep.grid_k2"] == "[8, 16]" and "train.seq_len" not in p
    assert parent.data.tags["best_params"].startswith("k2=")
    # the same command again: nothing left to do, nothing trained again
    assert run.main([str(cfg), "--no-progress"]) == 0
    assert len(study_of(tmp_path).get_trials()) == 4
    assert len(mlflow_runs(tmp_path, "trial")[1]) == 4


def test_a_diverging_trial_is_a_result_valued_at_the_stated_penalty(tmp_path, capsys):
    """Divergence is an outcome of the study, not a failure of it: the trial is COMPLETE
    with value ln V (the uniform prediction's loss), marked diverged with its reason; its
    MLflow run ends FAILED with the reason and says DIVERGED; the study exits 0."""
    cfg = write_config(tmp_path, {"sampler": "grid", "grid_k2": [16], "grid_clip": ["none"],
                                  "grid_lr": [2e-3, 50.0], "k2_min": 4, "k2_max": 64,
                                  "trials": 2}, train={"optimizer": "adam"})
    assert run.main([str(cfg), "--no-progress"]) == 0
    by_lr = {t.params["lr"]: t for t in study_of(tmp_path).get_trials()}
    good, bad = by_lr[2e-3], by_lr[50.0]
    assert good.state == TrialState.COMPLETE and not good.user_attrs.get("diverged")
    assert bad.state == TrialState.COMPLETE and bad.user_attrs["diverged"]
    vocab = len(set((tmp_path / "prose.txt").read_text()))
    assert bad.value == pytest.approx(math.log(vocab))
    assert "initial" in bad.user_attrs["fail_reason"] or "nan" in bad.user_attrs["fail_reason"]
    client, children = mlflow_runs(tmp_path, "trial")
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.tags["trial_state"] == "DIVERGED"
    assert failed[0].data.tags["outcome"] == "diverged"
    assert failed[0].data.tags["failure_reason"] == bad.user_attrs["fail_reason"]
    out = capsys.readouterr().out
    assert "1 converged, 1 diverged" in out
    _, parents = mlflow_runs(tmp_path, "study")
    m = parents[0].data.metrics
    assert m["study/trials_diverged"] == 1 and m["study/trials_complete"] == 1
    # the best trial is the converged one, whatever the penalty
    assert parents[0].data.tags["best_trial"] == str(good.number)


# a learning rate that trains and one that cannot, under a median pruner from trial 2 on
GOOD_AND_BAD_LR_MEDIAN = {"sampler": "grid", "grid_k2": [16], "grid_clip": ["none"],
                          "grid_lr": [1e-2, 1e-7], "k2_min": 4, "k2_max": 64, "trials": 2,
                          "pruner": "median", "pruner_startup_trials": 1,
                          "pruner_warmup_epochs": 0}


def test_pruning_stops_a_bad_trial_before_its_last_epoch(tmp_path):
    cfg = write_config(tmp_path, GOOD_AND_BAD_LR_MEDIAN, train={"epochs": 3})
    assert run.main([str(cfg), "--no-progress"]) == 0
    good, bad = sorted(study_of(tmp_path).get_trials(), key=lambda t: -t.params["lr"])
    assert good.state == TrialState.COMPLETE and len(good.intermediate_values) == 3
    assert bad.state == TrialState.PRUNED and len(bad.intermediate_values) < 3
    assert "pruned after epoch" in bad.user_attrs["pruned_reason"]

    _, children = mlflow_runs(tmp_path, "trial")
    states = sorted(c.data.tags["trial_state"] for c in children)
    assert states == ["COMPLETE", "PRUNED"]


def test_a_trial_that_spent_its_budget_is_complete_not_pruned(tmp_path):
    # one epoch: the bad trial is behind the median at its last (only) report
    cfg = write_config(tmp_path, GOOD_AND_BAD_LR_MEDIAN, train={"epochs": 1})
    assert run.main([str(cfg), "--no-progress"]) == 0
    assert [t.state for t in study_of(tmp_path).get_trials()] == [TrialState.COMPLETE] * 2


def test_a_killed_worker_is_recovered_when_the_command_runs_again(tmp_path):
    cfg = write_config(tmp_path, {**GRID4, "trials": 3}, train={"epochs": 2})
    args = [str(cfg), "--no-progress"]
    cmd = [sys.executable, "-m", "study.run", *args]
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_after.py"), "1", *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr
    (lost,) = study_of(tmp_path).get_trials(states=(TrialState.RUNNING,))
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "1 trial(s) of workers that stopped" in again.stderr
    trials = study_of(tmp_path).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3  # the requested number
    dead = next(t for t in trials if t.number == lost.number)
    assert dead.state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert len(retry) == 1 and retry[0].params == lost.params
    assert "stopped during the trial" in retry[0].user_attrs["retry_reason"]
    assert retry[0].state == TrialState.COMPLETE
    client, children = mlflow_runs(tmp_path, "trial")
    killed_run = next(c for c in children if c.info.run_id == dead.user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "KILLED"


def test_duplicate_suggestions_are_not_trained_twice(tmp_path):
    # a space of one point: every suggestion after the first is a duplicate
    cfg = write_config(tmp_path, {"sampler": "random", "k2_min": 16, "k2_max": 16,
                                  "k1_fractions": [1.0], "clip_modes": ["none"],
                                  "trials": 3})
    assert run.main([str(cfg), "--no-progress"]) == 0
    trials = study_of(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.user_attrs.get("duplicate_of") for t in trials] == [None, 0, 0]
    assert len({t.value for t in trials}) == 1
    assert len(mlflow_runs(tmp_path, "trial")[1]) == 1  # trained once


def test_a_duplicate_of_a_diverged_trial_is_diverged_too(tmp_path, capsys):
    cfg = write_config(tmp_path, {"sampler": "random", "k2_min": 16, "k2_max": 16,
                                  "k1_fractions": [1.0], "clip_modes": ["none"],
                                  "trials": 2}, train={"optimizer": "adam", "lr": 50.0})
    assert run.main([str(cfg), "--no-progress"]) == 0
    first, second = study_of(tmp_path).get_trials()
    assert second.user_attrs["duplicate_of"] == 0
    for t in (first, second):
        assert t.state == TrialState.COMPLETE and t.user_attrs["diverged"]
    assert second.value == first.value and second.user_attrs["fail_reason"]
    assert "0 converged, 2 diverged" in capsys.readouterr().out
    assert len(mlflow_runs(tmp_path, "trial")[1]) == 1  # trained once


def test_a_study_resumed_with_another_config_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path, {**GRID4, "trials": 1})
    assert run.main([str(cfg), "--no-progress"]) == 0
    cfg2 = write_config(tmp_path, {**GRID4, "trials": 1}, train={"lr": 0.01})
    assert run.main([str(cfg2), "--no-progress"]) == 2
    assert "another configuration" in capsys.readouterr().err


@pytest.mark.parametrize("bad,needle", [
    ({"grid_k2": [1000]}, "outside k2_min..k2_max"),
    ({"grid_clip": ["sometimes"]}, "not none, norm:THRESHOLD, value:THRESHOLD or preact:THRESHOLD"),
    ({"lr_min": 1e-3}, "set both sweep.lr_min and sweep.lr_max"),
])
def test_bad_sweep_settings_are_rejected(tmp_path, capsys, bad, needle):
    cfg = write_config(tmp_path, {**GRID4, **bad})
    assert run.main([str(cfg)]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "results" / "mlflow.db").exists()


def test_a_database_storage_url_works(tmp_path):
    """Any Optuna storage URL works: SQLite here, the same RDBStorage code as PostgreSQL
    for workers on several machines."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = write_config(tmp_path, {**GRID4, "trials": 2, "storage": url})
    assert run.main([str(cfg), "--workers", "2", "--no-progress"]) == 0
    trials = optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(isinstance(t.user_attrs["heartbeat"], float) for t in trials)
    assert len(mlflow_runs(tmp_path, "trial")[1]) == 2


def test_a_trial_whose_remote_worker_went_silent_is_run_again(tmp_path):
    """On another machine a worker's process cannot be checked: its heartbeat is."""
    study = optuna.create_study(study_name="r", storage=open_storage(
        f"journal:{tmp_path / 'r.journal'}"))
    now = time.time()
    for beat in (now - STALE_AFTER_S - 1, now - 5):
        t = study.ask({"k2": optuna.distributions.IntDistribution(2, 64)})
        t.set_user_attr("worker", "another-machine:4242:123456")
        t.set_user_attr("heartbeat", beat)
    assert recover(study) == [0]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.FAIL, 1: TrialState.RUNNING, 2: TrialState.WAITING}
    assert study.trials[2].system_attrs["fixed_params"] == study.trials[0].params
    assert study.trials[2].user_attrs["retry_of"] == 0
    assert "stopped during the trial" in study.trials[2].user_attrs["retry_reason"]


def test_the_heartbeat_stamps_a_running_trial(tmp_path, monkeypatch):
    monkeypatch.setattr(storage_mod, "HEARTBEAT_S", 0.05)
    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'h.journal'}"))
    trial = study.ask()
    with heartbeat(trial):
        time.sleep(0.3)
    first = study.trials[0].user_attrs["heartbeat"]
    assert time.time() - 0.3 < first <= time.time()
    time.sleep(0.15)  # stopped with the block: no more stamps
    assert study.trials[0].user_attrs["heartbeat"] == first


def test_a_fixed_k1_varies_only_the_truncation_depth(tmp_path):
    """sweep.k1: every trial takes k1 new steps per update (the same updates over the same
    characters); only k2, the gradient's reach, differs, and k1 is no search parameter."""
    cfg = write_config(tmp_path, {"sampler": "grid", "grid_k2": [4, 8, 16],
                                  "grid_clip": ["none"], "k1": 4, "k2_min": 4, "k2_max": 64,
                                  "trials": 3}, train={"epochs": 1})
    assert run.main([str(cfg), "--no-progress"]) == 0
    trials = study_of(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all("k1_fraction" not in t.params and t.user_attrs["k1"] == 4 for t in trials)
    client, children = mlflow_runs(tmp_path, "trial")
    by_k2 = {int(c.data.params["train.seq_len"]): c for c in children}
    assert sorted(by_k2) == [4, 8, 16]
    assert {c.data.params["train.k1"] for c in children} == {"4"}
    # the report's truncation section and claim read the study back
    from analyses import claims, sweep_claims, truncation
    from analyses.runs import Runs

    runs = Runs.load(tracking_uri(TrackingConfig(results_dir=str(tmp_path / "results"))))
    [(_, done)] = truncation.studies(runs)
    assert list(done.k2) == [4, 8, 16]
    sec = truncation.build(runs, tmp_path / "report")
    assert sec.missing is None and len(sec.figures) == 1
    assert list(sec.tables["truncation_s"].k2) == [4, 8, 16]
    verdict, evidence = sweep_claims.c_too_short_bptt(runs, None)
    gap, short, best = truncation.penalty(done)
    assert verdict == (claims.REPRODUCED if gap >= claims.MARGIN else claims.NOT)
    assert f"k2 = {short} is {gap:+.4f} above the best k2 = {best}" in evidence
    # the same updates: each epoch's chars per update are k1 · batch, whatever k2
    updates = {k2: client.get_metric_history(c.info.run_id, "train/updates")
               for k2, c in by_k2.items()}
    assert len({tuple(m.value for m in h) for h in updates.values()}) == 1, updates


def test_a_fixed_k1_above_a_k2_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path, {**GRID4, "k1": 10})
    assert run.main([str(cfg)]) == 2
    assert "sweep.k1 = 10 exceeds the smallest k2 = 8" in capsys.readouterr().err


def test_clipping_studied_over_learning_rates_reads_back_as_a_claim(tmp_path):
    """Pascanu13's regime in miniature: SGD on the summed loss; at lr 2 the unclipped trial
    diverges (a result, COMPLETE at the penalty) and the norm-clipped one converges; the
    report's claim and heatmap read it back from the store."""
    from analyses import claims, sweep_claims
    from analyses.runs import Runs
    from study.sweep.figures import bptt_clip_heatmap, swept_axis

    cfg = write_config(tmp_path, {"sampler": "grid", "grid_k2": [16], "k2_min": 4,
                                  "k2_max": 64, "grid_clip": ["none", "norm:1"],
                                  "grid_lr": [0.05, 2.0], "trials": 4},
                       train={"optimizer": "sgd", "time_reduction": "sum", "epochs": 2})
    assert run.main([str(cfg), "--no-progress"]) == 0
    t = {(tr.params["lr"], tr.params["clip_mode"]): tr for tr in study_of(tmp_path).get_trials()}
    assert t[(2.0, "none")].user_attrs.get("diverged")
    assert not t[(2.0, "norm")].user_attrs.get("diverged")
    runs = Runs.load(tracking_uri(TrackingConfig(results_dir=str(tmp_path / "results"))))
    verdict, evidence = sweep_claims.c_clip_prevents_divergence(runs, None)
    assert verdict == claims.REPRODUCED, evidence
    assert "lr 2: unclipped diverged; converged with norm:1" in evidence
    [(_, table)] = sweep_claims.trials(runs)
    assert swept_axis(table) == "lr" and bptt_clip_heatmap(table) is not None
    # clip rate and gradient-norm quantiles per epoch on the trial runs
    client, children = mlflow_runs(tmp_path, "trial")
    clipped = [c for c in children if c.data.params["train.clip"] == "norm"
               and c.data.params["train.lr"] == "2.0"]
    hist = client.get_metric_history(clipped[0].info.run_id, "train/clip_rate")
    assert [h.step for h in hist] == [1, 2] and all(0 < h.value <= 1 for h in hist)
    assert "train/grad_norm_preclip_p99" in clipped[0].data.metrics
