"""CUDA graphs of the engine's T-step loops: one replay instead of hundreds of launches.

A 100-step layer launches, per training step, some 200 kernels forward (a GEMM and the
step's kernel per time step) and as many backward, each costing microseconds of Python and
driver dispatch; at H = 128 that dispatch, not the arithmetic, bounds the speed. Captured
once as a `torch.cuda.CUDAGraph`, the loop replays from a single call.

    g = Graphed(fn, inputs)        # warm up on a side stream, then capture fn(*inputs)
    outs = g(*new_inputs)          # copy the new inputs into the captured ones, replay

A graph replays on the memory it was captured with: its inputs are copied into the captured
tensors (skipped when they already are those tensors, as a forward graph's outputs are for
the backward graph), and its outputs are the same tensors every call. study.engine.scan
uses it only where that is safe: while training under `single_backward()` (each forward's
buffers are back-propagated once, before the layer runs forward again), with gradients on,
and without the recorders that read per-step values (error flow, pre-activation clipping
counts). One graph per layer, loop, and shape (the last, shorter TBPTT window is its own).

`backend` makes the mechanics testable without a GPU: `EagerGraph` keeps the same contract
(captured inputs, outputs that are the same tensors every call) by running `fn` again and
copying its results into the captured outputs; the tests train with it and compare against
the engine without graphs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class CudaGraph:
    """Capture with torch.cuda.graph after a warm-up on a side stream (the first calls
    compile Triton kernels and let cuBLAS pick its algorithms)."""

    def __init__(self, fn: Callable, inputs: Sequence[Tensor | None], warmup: int = 2):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*inputs)

    def replay(self):
        self.graph.replay()
        return self.outputs


class EagerGraph:
    """The same contract on any device, for tests: replay runs fn again on the captured
    inputs and writes its results into the captured outputs."""

    def __init__(self, fn: Callable, inputs: Sequence[Tensor | None], warmup: int = 2):
        self.fn, self.inputs = fn, inputs
        self.outputs = fn(*inputs)
        self.replays = 0

    def replay(self):
        self.replays += 1
        for mine, new in zip(self.outputs, self.fn(*self.inputs), strict=True):
            if mine is not None:
                mine.copy_(new)
        return self.outputs


backend: type = CudaGraph  # tests set EagerGraph


class Graphed:
    """fn(*inputs) -> tuple of tensors, captured once on copies of `inputs` (or on the
    inputs themselves where `keep[k]`: tensors that are the same memory every call)."""

    def __init__(self, fn: Callable, inputs: Sequence[Tensor | None],
                 keep: Sequence[bool] | None = None):
        keep = keep or [False] * len(inputs)
        self.inputs = [t if (t is None or k) else t.detach().clone()
                       for t, k in zip(inputs, keep, strict=True)]
        self.graph = backend(fn, self.inputs)

    def __call__(self, *inputs: Tensor | None):
        for mine, new in zip(self.inputs, inputs, strict=True):
            if mine is None or new is None:
                if (mine is None) != (new is None):
                    raise RuntimeError("a graph captured with an input of None is replayed "
                                       "with a tensor there, or the reverse")
                continue
            if new.data_ptr() != mine.data_ptr() or new.stride() != mine.stride():
                mine.copy_(new)
        return self.graph.replay()


def shape_key(*tensors: Tensor | None) -> tuple:
    """What a captured graph is specific to: each input's shape, dtype and presence."""
    return tuple(None if t is None else (tuple(t.shape), t.dtype) for t in tensors)
