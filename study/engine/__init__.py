"""The recurrence engine: what a cell computes and how fast.

- `cells`: one class per variant (the per-step equations, their derivative, and every fact
  about the variant the rest of the harness needs); `python -m study.engine.cells VARIANT`
  prints its equations.
- `scan`: the time loop, forward and backward, written once for every cell.
- `fused`: the elementwise step in C, described mechanically from the cell classes.
"""
