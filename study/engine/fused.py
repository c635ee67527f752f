"""Fused elementwise kernels for the engine: one C call per time step and direction.

The time loop and the matrix products stay in study/scan.py and torch; what a cell does
between two GEMMs — some twenty small tensor operations in study/cells.py — becomes one
call into `_fused.c`, compiled once per machine with the system C compiler and loaded
with ctypes (no torch headers, about a second to build). The kernels implement the
equations of the LSTM family, the GRU and the RNN as declared by each cell's
`kernel_spec()`; the tests hold them equal to the torch code, which stays the reference
and the fallback (other dtypes, CUDA, no compiler, or `engine: torch`).

    python -m study.engine.fused          # build (the Makefile's install step does this) and check
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name("_fused.c"), Path(__file__).with_name("_fused_body.h")]
# -ffast-math lets gcc call glibc's vector exp/tanh. It is given when compiling only: linked
# with it, GCC 12 would add crtfastmath.o, which flushes denormals in the whole process.
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-Wall"]
LDFLAGS = ["-lmvec", "-lm"]
ACT = {"sigmoid": 0, "tanh": 1, "identity": 2, "hard": 3, "binary": 4, "scaled": 5}
FORGET = {"gate": 0, "none": 1, "coupled": 2}


class Spec(ctypes.Structure):
    _fields_ = [("H", ctypes.c_int), ("oi", ctypes.c_int), ("of", ctypes.c_int),
                ("oo", ctypes.c_int), ("oz", ctypes.c_int), ("pi", ctypes.c_int),
                ("pf", ctypes.c_int), ("po", ctypes.c_int), ("forget", ctypes.c_int),
                ("sigma", ctypes.c_int), ("g", ctypes.c_int), ("k", ctypes.c_int),
                ("gm", ctypes.c_double), ("km", ctypes.c_double), ("fgr", ctypes.c_int)]


def cache_dir() -> Path:
    base = os.environ.get("STUDY_FUSED_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "study")
    return Path(base)


def _machine_key() -> str:
    """Source, flags and CPU: a library built elsewhere (other instructions) is not reused."""
    h = hashlib.sha256()
    for src in SOURCES:
        h.update(src.read_bytes())
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    h.update(platform.machine().encode())
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
        h.update(flags.encode())
    except (OSError, StopIteration):
        pass
    return h.hexdigest()[:16]


def library_path() -> Path:
    return cache_dir() / f"fused-{_machine_key()}.so"


def build(verbose: bool = False) -> Path:
    """Compile the kernels (once per machine and source); return the library's path."""
    out = library_path()
    if out.is_file():
        return out
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc or cc) found")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        obj, lib = Path(tmp) / "fused.o", Path(tmp) / "fused.so"
        for cmd in ([cc, *CFLAGS, "-c", str(SOURCES[0]), "-o", str(obj)],
                    [cc, "-shared", str(obj), "-o", str(lib), *LDFLAGS]):
            if verbose:
                print(" ".join(cmd))
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"building the fused kernels failed:\n{' '.join(cmd)}\n"
                                   f"{r.stderr.strip()}")
        os.replace(lib, out)
    return out


_LIB: ctypes.CDLL | None = None
_ERROR: str | None = None


def load() -> ctypes.CDLL | None:
    """The kernels, building them if needed; None (with one warning) if that fails."""
    global _LIB, _ERROR
    if _LIB is not None or _ERROR is not None:
        return _LIB
    try:
        lib = ctypes.CDLL(str(build()))
        ptr, i = ctypes.c_void_p, ctypes.c_int
        for sfx in ("_f32", "_f64"):
            getattr(lib, "lstm_fwd" + sfx).argtypes = [ptr, i, ptr, i, ptr, ptr, ptr, i, ptr, ptr]
            getattr(lib, "lstm_bwd" + sfx).argtypes = [ptr, i, ptr, ptr, i, ptr, ptr, ptr, i, ptr,
                                                       ptr, ptr, ptr, i, ptr, ptr]
            getattr(lib, "gru_fwd" + sfx).argtypes = [i, i, ptr, ptr, ptr, ptr, ptr]
            getattr(lib, "gru_bwd" + sfx).argtypes = [i, i, ptr, ptr, ptr, ptr, ptr, ptr, ptr]
            getattr(lib, "rnn_bwd" + sfx).argtypes = [i, ptr, ptr, ptr, ptr]
        _LIB = lib
    except (RuntimeError, OSError) as e:
        _ERROR = str(e)
        warnings.warn(f"fused kernels unavailable, using the torch engine: {e}", stacklevel=2)
    return _LIB


def error() -> str | None:
    return _ERROR


_SFX = {torch.float32: "_f32", torch.float64: "_f64"}


def kernel_for(cell, dtype: torch.dtype, device: torch.device, engine: str = "auto"):
    """A kernel object with the cell's step/backward signature, or None for the torch
    code. engine: "auto" (fused when possible), "fused" (required) or "torch"."""
    if engine == "torch":
        return None
    spec = cell.kernel_spec()
    reason = None
    if spec is None:
        reason = f"{type(cell).__name__} declares no kernel"
    elif device.type != "cpu" or dtype not in _SFX:
        reason = f"no fused kernel for {dtype} on {device.type}"
    elif load() is None:
        reason = f"the kernels did not build: {_ERROR}"
    if reason:
        if engine == "fused":
            raise RuntimeError(f"engine 'fused' requested but {reason}")
        return None
    family = {"lstm": LSTMKernel, "gru": GRUKernel, "rnn": RNNKernel}[spec["family"]]
    return family(cell, spec, _LIB, _SFX[dtype])


def _p(t):
    return None if t is None else t.data_ptr()


class LSTMKernel:
    inplace_grad = True  # the backward may write da over what the forward kept

    def __init__(self, cell, spec, lib, sfx):
        self.H, self.width = cell.H, cell.G * cell.H
        self.spec = Spec(H=cell.H, **{k: v for k, v in spec.items() if k != "family"})
        self.ref = ctypes.byref(self.spec)
        self.fwd, self.bwd = getattr(lib, "lstm_fwd" + sfx), getattr(lib, "lstm_bwd" + sfx)
        self.scratch = None

    def _scratch(self, like):
        if self.scratch is None or self.scratch.dtype != like.dtype:
            self.scratch = like.new_empty(6 * self.H + self.width)
        return self.scratch.data_ptr()

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        self.fwd(self.ref, a.shape[0], a.data_ptr(), a.stride(0), c_prev.data_ptr(),
                 c.data_ptr(), s.data_ptr(), s.stride(0), _p(P[0] if P else None),
                 self._scratch(a))

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None):
        self.bwd(self.ref, ds.shape[0], ds.data_ptr(), None, ds.stride(0), dc.data_ptr(), None,
                 kept.data_ptr(), kept.stride(0), c_prev.data_ptr(), c.data_ptr(),
                 _p(P[0] if P else None), da.data_ptr(), da.stride(0), self._scratch(da),
                 _p(dc_total))
        return None, dc


class GRUKernel:
    def __init__(self, cell, spec, lib, sfx):
        self.H = cell.H
        self.fwd, self.bwd = getattr(lib, "gru_fwd" + sfx), getattr(lib, "gru_bwd" + sfx)

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        self.fwd(a.shape[0], self.H, a.data_ptr(), ha.data_ptr(), s_prev.data_ptr(),
                 s.data_ptr(), P[0].data_ptr())

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None):
        ds_prev = torch.empty_like(ds)
        self.bwd(ds.shape[0], self.H, ds.data_ptr(), None, kept.data_ptr(), s_prev.data_ptr(),
                 da.data_ptr(), dha.data_ptr(), ds_prev.data_ptr())
        return ds_prev, None


class RNNKernel:
    inplace_grad = True  # da depends on ds and h only

    def __init__(self, cell, spec, lib, sfx):
        self.cell = cell
        self.bwd = getattr(lib, "rnn_bwd" + sfx)

    def step(self, a, ha, s_prev, c_prev, s, c, P):
        torch.tanh(a, out=s)  # one operation already

    def backward(self, ds, dc, kept, s_prev, c_prev, s, c, P, da, dha, dc_total=None):
        self.bwd(ds.numel(), ds.data_ptr(), None, s.data_ptr(), da.data_ptr())
        return None, None


def main() -> int:
    try:
        path = build(verbose="-v" in sys.argv)
    except RuntimeError as e:
        print(f"fused kernels not built ({e}); the torch engine will be used", file=sys.stderr)
        return 0  # not fatal: the torch engine is the fallback
    lib = load()
    print(f"fused kernels: {path} (abi {lib.study_fused_abi() if lib else '?'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
