"""The recurrence engine: what a cell computes and how fast.

- `cells`: the registry of variants (CELLS, in display order; `register`), the GRU and the
  RNN, and re-exports of everything below; `python -m study.engine.cells VARIANT` prints a
  variant's equations, generated from its class.
- `base`: the `Cell` interface: one class per variant is the single source of its
  equations, their derivative, and every fact about it the rest of the harness needs.
- `lstm`: the LSTM family, one step written once, and its variants as class switches.
- `activations`: the elementwise nonlinearities (σ, tanh, hard σ, binary, 4σ − 2, ...).
- `scan`: the time loop, forward and backward, written once for every cell.
- `fused`: the elementwise step in C (`_fused.c`, `_fused_body.h`), its description
  derived mechanically from the cell classes; a cell with its own equations has no kernel
  and runs on the torch step.
- `triton_step`: the same steps as Triton kernels for the GPU, generated from the same
  description (`fused.lstm_spec`); tested on the CPU under Triton's interpreter. The
  kernels themselves (device code) are `_triton_kernels`, imported only with triton.
- `graphs`: the T-step loops captured and replayed as CUDA graphs.
- `paths`: which code trains a run (cuDNN, Triton, C kernels or the torch step), chosen
  once from `model.engine`, the device and the training settings.
"""
