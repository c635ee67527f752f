"""Which code trains a layer: the choice of training path, made once per run from the cell,
`model.engine`, the device and the training settings, and said in the run's params.

    path = choose(cell_cls, engine="auto", device="cuda", clip="value", cuda_graphs="auto")
    path.kind      # "cudnn" | "triton" | "fused" | "torch"
    path.graphs    # the T-step loops replayed as CUDA graphs
    path.label()   # "engine (Triton kernels, CUDA graphs)": the run's train.trained_with

The paths:

- "cudnn": `lstm` and `gru` train through PyTorch's own recurrent kernels (cuDNN on CUDA;
  PyTorch's native ones on the CPU), with this harness's weights rearranged into their
  layout each step (same equations: tests/test_cells.py holds the two equal). The probes
  still read gates and cell states from the engine, which runs the same weights in
  inference, and the error-flow probe's backward runs on the engine too. Not with
  Graves's pre-activation clipping (`train.clip: preact`), which needs the engine's
  backward, nor with the truncated gradient.
- "triton": the engine with the Triton step kernels (study/engine/triton_step.py); every
  variant the C kernels cover. CUDA, or the Triton interpreter (`TRITON_INTERPRET=1`).
- "fused": the engine with the C step kernels (study/engine/fused.py); CPU.
- "torch": the engine with each cell's torch step (the reference; any device and dtype).

`engine: auto` picks cuDNN for lstm and gru on CUDA where it applies, else Triton on CUDA
when it is installed, else the torch step; on the CPU the C kernels when they build, else
the torch step. CUDA graphs (`train.cuda_graphs: auto`) replay the engine's T-step forward
and backward loops on CUDA, so that a 100-step layer is one launch each way rather than
hundreds of Python dispatches; they are off with pre-activation clipping (it counts what it
clamped) and never used for cuDNN (one call already).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from study.engine.base import Cell

ENGINES = ("auto", "fused", "torch", "triton", "cudnn")
GRAPHS = ("auto", "off")


class PathError(ValueError):
    """A requested path that cannot train this run; the message says which would."""


@dataclass(frozen=True)
class TrainingPath:
    kind: str  # "cudnn" | "triton" | "fused" | "torch"
    graphs: bool = False
    why: str = ""  # why auto did not take a faster path, when it did not

    def label(self) -> str:
        if self.kind == "cudnn":
            return "cuDNN (nn.LSTM/nn.GRU kernels; probes on the engine)"
        code = {"triton": "Triton kernels", "fused": "fused C kernels",
                "torch": "torch step"}[self.kind]
        return f"engine ({code}{', CUDA graphs' if self.graphs else ''})"


def cudnn_covers(cls: type[Cell]) -> bool:
    """The variant is nn.LSTM's or nn.GRU's own cell: `lstm` (no peepholes) or `gru`."""
    from study.engine.cells import GRU, LSTM

    return cls in (LSTM, GRU)


def choose(cls: type[Cell], engine: str, device: str, *, clip: str = "value",
           truncated_gradient: bool = False, cuda_graphs: str = "auto",
           precision: str = "fp32", triton: tuple[bool, str] | None = None,
           fused: bool | None = None) -> TrainingPath:
    """The path that trains `cls` (see the module docstring), or PathError naming what
    cannot be and what would. `triton` (available, why not) and `fused` (the C kernels
    build) default to asking the machine; tests and config checks pass them."""
    from study.engine.fused import no_kernel_reason

    if engine not in ENGINES:
        raise PathError(f"model.engine = {engine!r}; valid engines: {', '.join(ENGINES)}")
    if cuda_graphs not in GRAPHS:
        raise PathError(f"train.cuda_graphs = {cuda_graphs!r}; valid: {', '.join(GRAPHS)}")
    cuda = device == "cuda"
    if precision == "bf16" and not cuda:
        raise PathError(f"train.precision = 'bf16' is for CUDA (bfloat16 autocast) and this "
                        f"run trains on {device}; use 'fp32'")
    no_kernel = no_kernel_reason(cls)  # None: the C and Triton kernels cover it
    preact = clip == "preact"
    why_not_cudnn = (f"{cls.__name__} is not nn.LSTM's or nn.GRU's cell (only lstm and gru "
                     "are)" if not cudnn_covers(cls) else
                     "train.clip = 'preact' needs the engine's backward" if preact else
                     "the truncated gradient needs the engine's backward"
                     if truncated_gradient else None)
    graphs = cuda and cuda_graphs == "auto" and not preact

    def engine_path(kind, why=""):
        return TrainingPath(kind, graphs=graphs, why=why)

    def triton_state():  # asked only where it matters: importing triton takes a while
        return triton if triton is not None else _triton_available(device)

    if engine == "cudnn":
        if why_not_cudnn:
            raise PathError(f"model.engine = 'cudnn': {why_not_cudnn}; use engine 'auto'")
        return TrainingPath("cudnn")
    if engine == "torch":
        return engine_path("torch")
    if engine in ("fused", "triton") and no_kernel:
        raise PathError(f"model.engine = {engine!r}: {no_kernel}; use 'auto' or 'torch'")
    if engine == "fused":
        if cuda:
            raise PathError("model.engine = 'fused' runs on the CPU; on CUDA use 'triton', "
                            "'cudnn' (lstm, gru) or 'auto'")
        return engine_path("fused")
    if engine == "triton":
        triton_ok, triton_why = triton_state()
        if not triton_ok:
            raise PathError(f"model.engine = 'triton': {triton_why}")
        return engine_path("triton")
    # auto
    if cuda:
        if why_not_cudnn is None:
            return TrainingPath("cudnn")
        if no_kernel:
            return engine_path("torch", no_kernel)
        triton_ok, triton_why = triton_state()
        if triton_ok:
            return engine_path("triton", why_not_cudnn)
        return engine_path("torch", f"{why_not_cudnn}; {triton_why}")
    if no_kernel:
        return engine_path("torch", no_kernel)
    if fused if fused is not None else _fused_builds():
        return engine_path("fused")
    return engine_path("torch", "the C kernels did not build")


def allow_tf32(device: str, precision: str) -> None:
    """fp32 on CUDA lets cuBLAS and cuDNN use TF32 matmuls (train.precision's fp32); bf16
    is autocast, and the CPU has no TF32."""
    import torch

    if device == "cuda" and precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


_TOLD: set[type] = set()  # classes said to run on the torch step


def say_why(cls: type[Cell], path: TrainingPath) -> None:
    """Once per class and process, on stderr: why it runs on the torch step."""
    if path.kind == "torch" and path.why and cls not in _TOLD:
        _TOLD.add(cls)
        print(f"engine: {path.why}; it runs on the torch step", file=sys.stderr)


def _triton_available(device: str) -> tuple[bool, str]:
    import torch

    from study.engine import triton_step

    return triton_step.available(torch.device(device))


def _fused_builds() -> bool:
    from study.engine.fused import load

    return load() is not None
