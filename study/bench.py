"""`python -m study.bench`: training throughput and memory of every cell against torch.

What is timed is a full training step of the same small character model on both sides:
Embedding(V, H) -> one recurrent layer -> Linear(H, V) -> cross-entropy -> backward ->
RMSProp step, on random characters (fp32). Only the recurrent layer differs: this
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
this machine's measured fp32 GEMM rate. Peak memory is the largest resident set above its
starting point during one step at T = 1000, each model in a fresh process.
"""

from __future__ import annotations

import argparse
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

from study.config import ModelConfig
from study.engine.cells import CELLS
from study.engine.scan import single_backward
from study.model import CharLM

BASELINES = {"nn.LSTM": nn.LSTM, "nn.GRU": nn.GRU}


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


def make_step(model, V, T, B, device):
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.95)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (T, B), generator=g).to(device)
    y = torch.randint(0, V, (T, B), generator=g).to(device)
    is_ours = isinstance(model, CharLM)

    def step():
        with single_backward():
            out = model(x)
        logits = out[0] if is_ours else out
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def gemm_peak(device, n: int = 2048, reps: int = 5) -> float:
    """This machine's fp32 GEMM rate (GFLOP/s), best of a few n×n products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = math.inf
    for _ in range(reps + 2):
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def time_models(names, V, H, T, B, engine, device, rounds, progress=True):
    steps = {}
    for name in names:
        torch.manual_seed(0)
        steps[name] = make_step(build(name, V, H, engine, device), V, T, B, device)
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
            print(f"  H={H}: round {r + 1}/{rounds}", file=sys.stderr, end="\r")
    if progress:
        print(file=sys.stderr)
    return {n: statistics.median(v) for n, v in times.items()}


def timing_child(names, V, H, T, B, engine, device, rounds, threads, flush) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(flush)
    return time_models(names, V, H, T, B, engine, torch.device(device), rounds,
                       progress=False)


def time_in_processes(n, names, V, H, T, B, engine, device, rounds, threads, flush, quiet):
    """Median step seconds per model in each of n fresh processes."""
    out = []
    for i in range(n):
        spec = json.dumps(["timing", names, V, H, T, B, engine, str(device), rounds, threads,
                           flush])
        r = subprocess.run([sys.executable, "-m", "study.bench", "--child", spec],
                           capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"timing process failed: {r.stderr.strip()[-2000:]}")
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        if not quiet:
            print(f"  H={H}: process {i + 1}/{n} done", file=sys.stderr)
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


def run(args) -> tuple[list[dict], float, torch.device]:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.flush_denormal)
    names = list(BASELINES) + (args.variants or list(CELLS))
    peak = gemm_peak(device)
    print(f"{device} {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; fp32 GEMM peak {peak:.0f} GFLOP/s; "
          f"denormals flushed: {args.flush_denormal}; {args.processes} processes × "
          f"{args.rounds} rounds", file=sys.stderr)
    rows = []
    for H in args.hidden:
        per_proc = time_in_processes(args.processes, names, args.vocab, H, args.steps,
                                     args.batch, args.engine, device, args.rounds,
                                     torch.get_num_threads(), args.flush_denormal, args.quiet)
        mem = {}
        if args.memory and device.type == "cpu":
            for name in names:
                mem[name] = measure_memory(name, args.vocab, H, args.memory_steps, args.batch,
                                           args.engine, args.flush_denormal)
        for name in names:
            secs = statistics.median(p[name] for p in per_proc)
            vs_lstm = [p["nn.LSTM"] / p[name] for p in per_proc]
            vs_gru = [p["nn.GRU"] / p[name] for p in per_proc]
            cps = args.batch * args.steps / secs
            gflops = flops_per_char(name, args.vocab, H) * cps / 1e9
            is_gru = name in ("gru", "nn.GRU")
            rows.append({
                "variant": name,
                "engine": "torch built-in" if name in BASELINES else args.engine,
                "hidden": H, "batch": args.batch, "steps": args.steps, "chars_per_s": cps,
                "ratio_vs_nn_lstm": statistics.median(vs_lstm),
                "ratio_vs_nn_lstm_min": min(vs_lstm), "ratio_vs_nn_lstm_max": max(vs_lstm),
                "ratio_vs_nn_gru": statistics.median(vs_gru) if is_gru else math.nan,
                "gflops": gflops, "fraction_of_gemm_peak": gflops / peak,
                f"peak_mem_MiB_T{args.memory_steps}": mem.get(name, math.nan),
                "mem_ratio_vs_nn_lstm": (mem[name] / mem["nn.LSTM"]) if mem else math.nan,
            })
    return rows, peak, device


def print_table(rows, peak):
    import pandas as pd

    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 220, "display.max_columns", 30,
                           "display.float_format", "{:.2f}".format):
        print(df.to_string(index=False))
    print(f"(chars/s of a full training step; GFLOP/s against a measured GEMM peak of "
          f"{peak:.0f} GFLOP/s; memory in MiB)")
    return df


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="*", help="cells to time (default: all)")
    p.add_argument("--hidden", nargs="+", type=int, default=[128, 512], help="hidden sizes H")
    p.add_argument("--batch", type=int, default=100, help="batch size B")
    p.add_argument("--steps", type=int, default=100, help="sequence length T")
    p.add_argument("--vocab", type=int, default=84, help="vocabulary V (84: War and Peace)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per model and process")
    p.add_argument("--processes", type=int, default=3, help="fresh processes to time in")
    p.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=True,
                   help="flush denormal floats to zero (both sides alike)")
    p.add_argument("--engine", default="auto", choices=["auto", "fused", "torch"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure peak memory at --memory-steps (CPU)")
    p.add_argument("--memory-steps", type=int, default=1000, help="T for the memory run")
    p.add_argument("--out", default="results/bench.csv", help="CSV to write")
    p.add_argument("--mlflow", action="store_true", help="log the table to MLflow")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *spec = json.loads(args.child)
        print(json.dumps(timing_child(*spec)) if kind == "timing" else memory_child(*spec))
        return 0
    rows, peak, device = run(args)
    df = print_table(rows, peak)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(f"wrote {out} ({date.today()})")
    if args.mlflow:
        from study.config import TrackingConfig
        from study.tracking import Store

        store = Store(TrackingConfig(experiment="bench"), description=(
            "`python -m study.bench --mlflow`: one run per benchmark, chars/s per cell and "
            "width (train step, batch and steps as its params), the table as bench.csv."))
        tracker = store.start(f"bench · {date.today()}", {"kind": "bench", "device": str(device)},
                              description=f"Train-step throughput of {len(rows)} cell × width "
                              f"rows on {device}, ratios against nn.LSTM / nn.GRU in the "
                              "same process (bench.csv).")
        tracker.log_params({"hidden": args.hidden, "batch": args.batch, "steps": args.steps,
                            "vocab": args.vocab, "engine": args.engine,
                            "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "gemm_peak_gflops": round(peak, 1)})
        tracker.log_metrics({f"chars_per_s/{r['variant']}_H{r['hidden']}": r["chars_per_s"]
                             for r in rows})
        tracker.log_artifact(out)
        tracker.end()
        print(f"logged to MLflow run {tracker.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
