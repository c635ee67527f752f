from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """One smoke ablation (3 variants × 2 corpora × 1 seed, 2 epochs, probes on), shared by
    the tests that read runs back."""
    from study import run

    results = tmp_path_factory.mktemp("smoke")
    assert run.main([SMOKE, "--set", f"tracking.results_dir={results}", "--no-progress"]) == 0
    return results
