"""The claims table's verdicts (analyses.claims, analyses.sweep_claims)."""

REPRODUCED, NOT, NOT_RUN = "reproduced", "not reproduced", "not run"
TOO_SMALL = "too small to judge"
