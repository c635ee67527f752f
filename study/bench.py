"""`python -m study.bench`: training throughput and memory of every cell against torch.

    python -m study.bench                         # CPU: H 128 512, batch 100, T 100
    python -m study.bench --device cuda           # GPU: H 128 512 1024, batch 100 128
    python -m study.bench --device cuda --precision bf16

What is timed is a full training step of the same small character model on both sides:
Embedding(V, H) -> one recurrent layer -> Linear(H, V) -> cross-entropy -> backward ->
RMSProp step, on random characters. Only the recurrent layer differs: this
harness's cell on its engine, or nn.LSTM / nn.GRU (oneDNN on CPU, cuDNN on CUDA). The
one-hot input path of CharLM, which skips the first layer's input GEMM, is not used here:
that would flatter the engine.

Timing: every model is warmed up, then timed in rounds that visit the models in a rotated
order; the median step time per model gives chars/s (= B·T / seconds), and every ratio
is taken against nn.LSTM (and nn.GRU) timed in the same process and rounds. This is
repeated in several fresh processes (a shared machine has bad minutes); the table gives
the median over processes and the lowest and highest ratio seen. Denormal floats are
flushed to zero on both sides alike (as train.flush_denormal does in training).

FLOPs count the GEMMs as they run (per character: 6·G·H·(E + Hr) for the recurrent layer
and 6·H·V for the decoder; FGR's masked recurrent entries included); "of peak" divides by
this machine's measured GEMM rate (in the precision used). On CPU, peak memory is the
largest resident set above its starting point during one step at T = 1000, each model in a
fresh process; on CUDA it is torch.cuda.max_memory_allocated() above the memory allocated
before one training step at the timed shape (`peak_gpu_mem_MiB`), each model in turn.

Precision (`--precision`): fp32 everywhere; on CUDA, fp32 allows TF32 matmuls (cuBLAS and
cuDNN alike), and bf16 runs the forward under torch.autocast(bfloat16) on both sides.

Needs torch only (no MLflow, Optuna or pandas: the GPU machine may have nothing else): the
table is printed as aligned text columns and the CSV is written by the csv module.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# the schema, not study.config: loading YAML configs is not needed here
from study.config_schema import ModelConfig
from study.engine.cells import CELLS
from study.engine.paths import allow_tf32
from study.engine.scan import single_backward
from study.model import CharLM

BASELINES = {"nn.LSTM": nn.LSTM, "nn.GRU": nn.GRU}
# what model.engine accepts, read from the schema so the two stay in step
ENGINES = tuple({f.name: f for f in dataclasses.fields(ModelConfig)}["engine"]
                .metadata["choices"])
PRECISIONS = ("fp32", "bf16")
# the defaults per device: today's CPU table, and the GPU table of the issue
DEFAULTS = {"cpu": {"hidden": [128, 512], "batch": [100]},
            "cuda": {"hidden": [128, 512, 1024], "batch": [100, 128]}}


class TorchCharLM(nn.Module):
    def __init__(self, rnn_cls, V, H):
        super().__init__()
        self.embedding = nn.Embedding(V, H)
        self.rnn = rnn_cls(H, H)
        self.decoder = nn.Linear(H, V)

    def forward(self, x):
        y, _ = self.rnn(self.embedding(x))
        return self.decoder(y)


def build(name: str, V: int, H: int, engine: str, device) -> nn.Module:
    if name in BASELINES:
        model = TorchCharLM(BASELINES[name], V, H)
    else:
        cfg = ModelConfig(cell=name, hidden_size=H, num_layers=1, input="embedding",
                          embedding_size=H, engine=engine)
        model = CharLM(V, cfg)
    return model.to(device)


def flops_per_char(name: str, V: int, H: int) -> float:
    if name in BASELINES:
        G, Hr = (4 if name == "nn.LSTM" else 3), H
    else:
        cell = CELLS[name](H)
        G, Hr = cell.G, cell.state_size
    return 6.0 * G * H * (H + Hr) + 6.0 * H * V


def autocast(device: torch.device, precision: str):
    """The forward's context: bf16 autocast on CUDA, else nothing."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_step(model, V, T, B, device, precision: str = "fp32"):
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.95)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (T, B), generator=g).to(device)
    y = torch.randint(0, V, (T, B), generator=g).to(device)
    is_ours = isinstance(model, CharLM)

    def step():
        with single_backward(), autocast(device, precision):
            out = model(x)
            logits = out[0] if is_ours else out
            loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def gemm_peak(device, n: int = 2048, reps: int = 5, precision: str = "fp32") -> float:
    """This machine's GEMM rate (GFLOP/s) in the precision used (fp32, TF32 where allowed,
    bf16), best of a few n×n products."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(reps + 2):
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def time_models(names, V, H, T, B, engine, device, rounds, progress=True,
                precision="fp32"):
    steps = {}
    for name in names:
        torch.manual_seed(0)
        steps[name] = make_step(build(name, V, H, engine, device), V, T, B, device, precision)
        for _ in range(2):
            steps[name]()
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t)
        if progress:
            print(f"  H={H} B={B}: round {r + 1}/{rounds}", file=sys.stderr, end="\r")
    if progress:
        print(file=sys.stderr)
    return {n: statistics.median(v) for n, v in times.items()}, steps


def gpu_step_memory(steps: dict) -> dict:
    """Per model: the most CUDA memory allocated during one training step above what was
    allocated before it (bytes; before: every model's weights, optimizer state and last
    gradients): the step's activations and work space."""
    out = {}
    for name, step in steps.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        out[name] = torch.cuda.max_memory_allocated() - before
    return out


def timing_child(names, V, H, T, B, engine, device, rounds, threads, flush,
                 precision="fp32", memory=False) -> dict:
    """{"times": median step seconds per model, "gpu_mem": peak step bytes (CUDA)}."""
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(flush)
    device = torch.device(device)
    allow_tf32(device.type, precision)  # as training does (study.train.build_model)
    times, steps = time_models(names, V, H, T, B, engine, device, rounds, progress=False,
                               precision=precision)
    mem = gpu_step_memory(steps) if memory and device.type == "cuda" else {}
    return {"times": times, "gpu_mem": mem}


def time_in_processes(n, names, V, H, T, B, engine, device, rounds, threads, flush, quiet,
                      precision="fp32", memory=False, tag=None):
    """Per fresh process (n of them): {"times": median step seconds per model, "gpu_mem":
    peak step bytes per model on CUDA (else empty)}."""
    out = []
    for i in range(n):
        spec = json.dumps(["timing", names, V, H, T, B, engine, str(device), rounds, threads,
                           flush, precision, memory])
        r = subprocess.run([sys.executable, "-m", "study.bench", "--child", spec],
                           capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"timing process failed: {r.stderr.strip()[-2000:]}")
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        if not quiet:
            print(f"  {tag or f'H={H}'}: process {i + 1}/{n} done", file=sys.stderr)
    return out


def memory_child(name, V, H, T, B, engine, flush) -> int:
    """Peak resident bytes above the starting point during one training step."""
    device = torch.device("cpu")
    torch.set_flush_denormal(flush)
    torch.manual_seed(0)
    step = make_step(build(name, V, H, engine, device), V, T, B, device)
    with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the high-water mark
        f.write("5")
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(name, V, H, T, B, engine, flush) -> float:
    args = [sys.executable, "-m", "study.bench", "--child",
            json.dumps(["memory", name, V, H, T, B, engine, flush])]
    r = subprocess.run(args, capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    if r.returncode != 0:
        print(f"memory of {name} failed: {r.stderr.strip()[-500:]}", file=sys.stderr)
        return math.nan
    return int(r.stdout.strip()) / 2 ** 20


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve(args, error=None) -> torch.device:
    """The device, and the defaults that depend on it (--hidden, --batch) filled into args;
    error(message) (argparse's) refuses what cannot run: bf16 off CUDA, CUDA absent."""
    def fail(msg):
        if error is None:
            raise ValueError(msg)
        error(msg)

    device = resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: this machine has no CUDA device (torch "
             f"{torch.__version__}); use --device cpu")
    if args.precision != "fp32" and device.type != "cuda":
        fail(f"--precision {args.precision} is for CUDA (autocast on the GPU); on "
             f"{device.type} the bench runs in fp32")
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    if args.hidden is None:
        args.hidden = list(defaults["hidden"])
    if args.batch is None:
        args.batch = list(defaults["batch"])
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run(args) -> tuple[list[dict], float, torch.device]:
    device = resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.flush_denormal)
    allow_tf32(device.type, args.precision)
    cuda = device.type == "cuda"
    names = list(BASELINES) + (args.variants or list(CELLS))
    peak = gemm_peak(device, precision=args.precision)
    gpu = device_name(device)
    # on CPU the header is as it always was (fp32 is all it runs)
    precision = "" if not cuda else f"precision {args.precision}" + (
        " (TF32 matmuls allowed)" if args.precision == "fp32" else " (autocast)") + "; "
    print(f"{device} {gpu}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{precision}{peak_label(args.precision, cuda)} GEMM peak {peak:.0f} GFLOP/s; "
          f"denormals flushed: {args.flush_denormal}; {args.processes} processes × "
          f"{args.rounds} rounds", file=sys.stderr)
    rows = []
    for H in args.hidden:
        for B in args.batch:
            per_proc = time_in_processes(args.processes, names, args.vocab, H, args.steps, B,
                                         args.engine, device, args.rounds,
                                         torch.get_num_threads(), args.flush_denormal,
                                         args.quiet, args.precision, args.memory and cuda,
                                         tag=f"H={H}" + (f" B={B}" if len(args.batch) > 1
                                                         else ""))
            mem = {}
            if args.memory and device.type == "cpu":
                for name in names:
                    mem[name] = measure_memory(name, args.vocab, H, args.memory_steps, B,
                                               args.engine, args.flush_denormal)
            if args.memory and cuda:
                mem = {name: statistics.median(p["gpu_mem"][name] for p in per_proc) / 2 ** 20
                       for name in names}
            for name in names:
                rows.append(make_row(name, [p["times"] for p in per_proc], mem, args, H, B,
                                     peak, cuda, gpu))
    return rows, peak, device


def peak_label(precision: str, cuda: bool) -> str:
    return "bf16" if precision == "bf16" else ("tf32" if cuda else "fp32")


def make_row(name, per_proc, mem, args, H, B, peak, cuda, gpu) -> dict:
    """One row of the table: `per_proc` the median step seconds per model in each process,
    `mem` MiB per model (empty: not measured)."""
    secs = statistics.median(p[name] for p in per_proc)
    vs_lstm = [p["nn.LSTM"] / p[name] for p in per_proc]
    vs_gru = [p["nn.GRU"] / p[name] for p in per_proc]
    cps = B * args.steps / secs
    gflops = flops_per_char(name, args.vocab, H) * cps / 1e9
    is_gru = name in ("gru", "nn.GRU")
    mem_col = "peak_gpu_mem_MiB" if cuda else f"peak_mem_MiB_T{args.memory_steps}"
    row = {
        "variant": name,
        "engine": "torch built-in" if name in BASELINES else args.engine,
        "hidden": H, "batch": B, "steps": args.steps, "chars_per_s": cps,
        "ratio_vs_nn_lstm": statistics.median(vs_lstm),
        "ratio_vs_nn_lstm_min": min(vs_lstm), "ratio_vs_nn_lstm_max": max(vs_lstm),
        "ratio_vs_nn_gru": statistics.median(vs_gru) if is_gru else math.nan,
        "gflops": gflops, "fraction_of_gemm_peak": gflops / peak,
        mem_col: mem.get(name, math.nan),
        "mem_ratio_vs_nn_lstm": (mem[name] / mem["nn.LSTM"]) if mem else math.nan,
        "precision": args.precision,
    }
    if cuda:
        row["device_name"] = gpu
    return row


# columns the CSV has and the printed table leaves out (the header line gives them)
CSV_ONLY = ("precision", "device_name")


def format_table(rows: list[dict], columns: list[str]) -> str:
    """The rows as right-aligned text columns (floats to 2 decimals), without pandas."""
    def cell(v):
        if isinstance(v, float):
            return "NaN" if math.isnan(v) else f"{v:.2f}"
        return str(v)

    cells = [[cell(r.get(c, math.nan)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def print_table(rows, peak, precision: str = "fp32", cuda: bool = False) -> None:
    print(format_table(rows, [c for c in columns_of(rows) if c not in CSV_ONLY]))
    label = f"{peak_label(precision, cuda)} " if cuda else ""
    print(f"(chars/s of a full training step; GFLOP/s against a measured {label}GEMM peak of "
          f"{peak:.0f} GFLOP/s; memory in MiB" + (f"; {precision}" if cuda else "") + ")")


def columns_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(c for r in rows for c in r))


def write_csv(rows: list[dict], out: Path) -> None:
    """The table as CSV, as pandas' to_csv writes it (NaN as an empty field)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = columns_of(rows)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v
                        for v in (r.get(c, math.nan) for c in columns)])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="*", help="cells to time (default: all)")
    p.add_argument("--hidden", nargs="+", type=int,
                   help="hidden sizes H (default: 128 512 on CPU, 128 512 1024 on CUDA)")
    p.add_argument("--batch", nargs="+", type=int,
                   help="batch sizes B (default: 100 on CPU, 100 128 on CUDA)")
    p.add_argument("--steps", type=int, default=100, help="sequence length T")
    p.add_argument("--vocab", type=int, default=84, help="vocabulary V (84: War and Peace)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per model and process")
    p.add_argument("--processes", type=int, default=3, help="fresh processes to time in")
    p.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=True,
                   help="flush denormal floats to zero (both sides alike)")
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="this harness's engine (model.engine's choices)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (on CUDA with TF32 matmuls allowed) or bf16 (CUDA: autocast "
                        "of the forward, both sides alike)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure peak memory (CPU: resident set at --memory-steps; "
                        "CUDA: allocated during one step at the timed shape)")
    p.add_argument("--memory-steps", type=int, default=1000, help="T for the CPU memory run")
    p.add_argument("--out", default="results/bench.csv", help="CSV to write")
    p.add_argument("--mlflow", action="store_true", help="log the table to MLflow")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.child:
        kind, *spec = json.loads(args.child)
        print(json.dumps(timing_child(*spec)) if kind == "timing" else memory_child(*spec))
        return 0
    device = resolve(args, p.error)
    rows, peak, device = run(args)
    print_table(rows, peak, args.precision, device.type == "cuda")
    out = Path(args.out)
    write_csv(rows, out)
    print(f"wrote {out} ({date.today()})")
    if args.mlflow:
        from study.config import TrackingConfig
        from study.tracking import Store

        store = Store(TrackingConfig(experiment="bench"), description=(
            "`python -m study.bench --mlflow`: one run per benchmark, chars/s per cell and "
            "width (train step, batch and steps as its params), the table as bench.csv."))
        tracker = store.start(f"bench · {date.today()}", {"kind": "bench", "device": str(device)},
                              description=f"Train-step throughput of {len(rows)} cell × width "
                              f"× batch rows on {device}, ratios against nn.LSTM / nn.GRU in the "
                              "same process (bench.csv).")
        one_batch = len(args.batch) == 1  # the names and params of a one-batch table as before
        tracker.log_params({"hidden": args.hidden,
                            "batch": args.batch[0] if one_batch else args.batch,
                            "steps": args.steps,
                            "vocab": args.vocab, "engine": args.engine,
                            "precision": args.precision, "device_name": device_name(device),
                            "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "gemm_peak_gflops": round(peak, 1)})
        tracker.log_metrics({f"chars_per_s/{r['variant']}_H{r['hidden']}"
                             + ("" if one_batch else f"_B{r['batch']}"): r["chars_per_s"]
                             for r in rows})
        tracker.log_artifact(out)
        tracker.end()
        print(f"logged to MLflow run {tracker.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
