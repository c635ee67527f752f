"""The report: runs read back through study.tracking, turned into the papers' figures and
tables side by side with the published numbers (`python -m analyses.report`)."""
