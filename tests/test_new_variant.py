"""A new variant is one class: defined here, in a test file, it trains, is probed, prints
its equations and appears in the report, and no other file of the harness names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from analyses import report
from study import run
from study.config import TrackingConfig
from study.engine import fused
from study.engine.cells import CELLS, IDENTITY, LSTMFamily, register
from study.tracking import Reader, tracking_uri

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")
NAME = "niafcifg"


@pytest.fixture
def niafcifg():
    before = dict(CELLS)

    @register(NAME)
    class NIAFCIFG(LSTMFamily):
        """No input activation and coupled gates: z = W_z x + R_z h' + b_z, f = 1 − i."""

        g = IDENTITY
        forget = "coupled"

    yield NIAFCIFG
    CELLS.clear()
    CELLS.update(before)


def test_the_harness_names_no_variant_of_this_file():
    for path in [*(ROOT / "study").rglob("*.py"), *(ROOT / "analyses").rglob("*.py"),
                 *(ROOT / "configs").glob("*.yaml")]:
        assert NAME not in path.read_text(encoding="utf-8"), path


def test_its_equations_come_from_its_switches(niafcifg):
    lines = niafcifg.equations()
    assert "z = W_z x + R_z h' + b_z" in lines  # no input activation
    assert "f = 1 − i" in lines and "c = (1 − i) ⊙ c' + i ⊙ z" in lines, lines
    assert fused.kernel_family(niafcifg) == "lstm"  # the C kernel is derived, not written


def test_a_variant_defined_in_a_test_trains_probes_and_is_reported(niafcifg, tmp_path):
    assert run.main([SMOKE, "--no-progress", "--set", f"tracking.results_dir={tmp_path}",
                     "--set", f"ablation.variants=[{NAME}, lstm]",
                     "--set", "ablation.datasets=[warpeace]"]) == 0
    uri = tracking_uri(TrackingConfig(results_dir=str(tmp_path)))
    reader = Reader(uri)
    (new,) = reader.runs(["smoke"], tags={"kind": "train", "variant": NAME})
    assert new.status == "FINISHED", new.tags.get("failure_reason")
    (lstm,) = reader.runs(["smoke"], tags={"kind": "train", "variant": "lstm"})
    assert new.metrics["test_nats_per_char"] < lstm.metrics["test_nats_per_char"] + 0.5
    assert "saturation/L1_i_right_mean" in new.metrics  # probed: the coupled f is read too
    assert "saturation/L1_f_right_mean" in new.metrics
    assert reader.download(new.run_id, "probes/saturation.csv", tmp_path / "dl") is not None

    out = tmp_path / "report"
    assert report.main(["--tracking-uri", uri, "--experiment", "smoke", "--out", str(out),
                        "--no-log"]) == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert NAME in text
