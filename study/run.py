"""`python -m study.run CONFIG [--set section.key=value ...]`: the one place that parses argv.

An ablation config trains one run per (variant, dataset, seed) of its grid, each an MLflow
child run of one parent run, and prints a summary table (test loss in nats/char and
bits/char). Everything is validated first — config keys and values, the corpora, their
encoding — so a bad input stops the command before any MLflow run exists.

Re-running the same command skips runs whose configuration already finished (by config
hash; `--force` retrains them); `--resume` continues interrupted runs from their last
checkpoint inside the same MLflow run.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from study import config as config_mod
from study.ablation import RunSpec, describe, ok, run_ablation, summary_table
from study.config import Config, ConfigError, TrackingConfig, run_hash, updated
from study.data import Corpus, DataError, corpus_key, load_corpus
from study.signals import exit_code, sigterm_as_interrupt
from study.train import CheckpointError, pick_device


def datasets_of(cfg: Config) -> list[str]:
    if cfg.data.path is not None:
        return [cfg.data.corpus]
    return cfg.ablation.datasets or [cfg.data.corpus]


def load_corpora(cfg: Config) -> dict[str, Corpus]:
    """Every corpus the config names, found (or generated), decoded and encoded (the slow
    checks first), keyed by data.corpus_key: one per dataset and value of a data.* axis."""
    cache = Path(cfg.tracking.results_dir) / "cache"
    data_axes = [(k, v) for k, v in cfg.ablation.grid.items() if k.startswith("data.")]
    sections = {}
    for name in datasets_of(cfg):
        for combo in itertools.product(*(values for _, values in data_axes)):
            d = updated(cfg, {"data.corpus": name, **dict(zip([k for k, _ in data_axes], combo,
                                                              strict=True))}).data
            sections[corpus_key(d)] = d
    return {key: load_corpus(d, cache) for key, d in sections.items()}


def make_plan(cfg: Config, corpora: dict[str, Corpus]) -> list[RunSpec]:
    """The grid datasets × variants × extra axes × seeds, each a full child config."""
    from study.model import matched_width

    g = cfg.ablation
    axes = [("data.corpus", datasets_of(cfg)), ("model.cell", g.variants or [cfg.model.cell]),
            *g.grid.items(), ("train.seed", g.seeds or [cfg.train.seed])]
    plan = []
    for combo in itertools.product(*(values for _, values in axes)):
        changes = dict(zip([k for k, _ in axes], combo, strict=True))
        child = updated(cfg, changes)
        if g.match_params_to:
            vocab = corpora[corpus_key(child.data)].vocab_size
            child = updated(child, {"model.hidden_size": matched_width(
                child.model, vocab, g.match_params_to)})
        extra = {k: changes[k] for k, _ in axes[2:-1]}
        plan.append(RunSpec(child.model.cell, child.data.corpus, child.train.seed, child,
                            run_hash(child), extra))
    return plan


def check_device(cfg: Config) -> None:
    import torch

    devices = {cfg.train.device, *cfg.ablation.grid.get("train.device", [])}
    if "cuda" in devices and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but this machine has no CUDA device; use "
                          "'auto' (CUDA when present) or 'cpu'")


def check_paths(plan: list[RunSpec]) -> None:
    """Every run can train on this machine the way its config asks (model.engine,
    train.precision; study.engine.paths), checked before any run exists."""

    from study.engine.cells import get_cell_class
    from study.engine.paths import PathError, choose

    seen = set()
    for spec in plan:
        m, t = spec.cfg.model, spec.cfg.train
        device = pick_device(t.device).type  # check_device has refused cuda without one
        key = (m.cell, m.engine, device, t.clip, m.truncated_gradient, t.cuda_graphs,
               t.precision)
        if key in seen:
            continue
        seen.add(key)
        try:
            choose(get_cell_class(m.cell), m.engine, device, clip=t.clip,
                   truncated_gradient=m.truncated_gradient, cuda_graphs=t.cuda_graphs,
                   precision=t.precision)
        except PathError as e:
            raise ConfigError(f"{spec.name} on {device}: {e}") from None


def check_sizes(plan: list[RunSpec], corpora: dict[str, Corpus]) -> None:
    """Every split must fill the batch shape of every run (and the probes' error flow its
    window), checked before any run exists: a too-short test split would otherwise fail
    only after a whole run had trained."""
    seen = set()
    for spec in plan:
        t, pr = spec.cfg.train, spec.cfg.probes
        corpus = corpora[corpus_key(spec.cfg.data)]
        key = (corpus_key(spec.cfg.data), t.batch_size, pr.enabled and pr.error_flow,
               pr.error_flow_q)
        if key in seen:
            continue
        seen.add(key)
        for split, ids in corpus.splits.items():
            if (len(ids) - 1) // t.batch_size < 1:
                raise DataError(
                    f"{corpus.path}: the {split} split has {len(ids):,} characters, too few "
                    f"for train.batch_size = {t.batch_size} streams (it needs at least "
                    f"{t.batch_size + 1:,}; the corpus has {len(corpus.ids):,} characters "
                    f"split {_fractions(corpus)}). Lower train.batch_size, change data.splits,"
                    " or use more text.")
        need = pr.error_flow_q + 102  # the error flow's 100-step warm-up, window and target
        if pr.enabled and pr.error_flow and len(corpus.splits["val"]) < need:
            raise DataError(
                f"{corpus.path}: the val split has {len(corpus.splits['val']):,} characters; "
                f"the probes' error flow needs {need:,} (probes.error_flow_q = "
                f"{pr.error_flow_q} + 102). Lower probes.error_flow_q, set "
                "probes.error_flow=false, or use more text.")


def _fractions(corpus: Corpus) -> str:
    n = len(corpus.ids)
    return "/".join(f"{len(v) / n:.2f}" for v in corpus.splits.values()) if n else "?"


def print_summary(rows: list[dict]) -> None:
    if not rows:
        return
    df = summary_table(rows).drop(columns=["run_id"])
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 20,
                                             "display.float_format", "{:.4f}".format):
        print("\nSummary (losses in nats/char and bits/char; test split from the best-val "
              "checkpoint):")
        print(df.to_string(index=False))


def print_plan(cfg: Config, plan: list[RunSpec], corpora: dict[str, Corpus], *,
               estimate: bool = True, workers: int = 1, seconds: float = 60.0,
               progress: bool = True) -> None:
    """The plan, one line per run; then (estimate) each run's time and the total, from a
    short calibration on this machine (study.calibrate; its progress on stderr)."""
    from study.model import count_params

    print(describe(cfg, plan))
    for spec in plan:
        c = corpora[corpus_key(spec.cfg.data)]
        n = count_params(spec.cfg.model, c.vocab_size)
        print(f"  {spec.name:36s} {spec.cfg.model.num_layers}x{spec.cfg.model.hidden_size:<5d} "
              f"{n:>10,} params  hash {spec.hash}  corpus {c.path} ({len(c.ids):,} chars, "
              f"{c.vocab_size} symbols)")
    if not estimate:
        return
    if not plan:
        print("no time estimate: the plan has no runs")
        return
    from study import calibrate

    sys.stdout.flush()  # the plan first, then the calibration's progress
    est = calibrate.estimate(plan, corpora, progress=progress, seconds=seconds,
                             workers=workers)
    print()
    print("\n".join(est.lines()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a YAML config, e.g. configs/ablation.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue interrupted runs from their last checkpoint")
    p.add_argument("--force", action="store_true",
                   help="retrain runs whose configuration already finished")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and corpora, print the plan, train nothing")
    p.add_argument("--no-estimate", action="store_true",
                   help="--dry-run: skip the time estimate (and its calibration)")
    p.add_argument("--calibrate-seconds", type=float, default=60.0, metavar="S",
                   help="--dry-run: time the estimate's calibration may take before the "
                        "shapes left are extrapolated by FLOPs (default 60)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local worker processes taking runs (ablation) or trials (sweep: "
                        "overrides sweep.workers) from the shared queue")
    args = p.parse_args(argv)
    sigterm_as_interrupt()  # `timeout`, Docker and Slurm stop jobs with SIGTERM
    try:
        return _main(args)
    except KeyboardInterrupt as e:
        print("\ninterrupted: the runs in progress are marked KILLED in MLflow; continue "
              "them with the same command and --resume", file=sys.stderr)
        return exit_code(e)


def _main(args) -> int:
    t0 = time.perf_counter()
    try:
        cfg = config_mod.load(args.config, args.set)
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers {args.workers}: need at least 1")
        check_device(cfg)
        corpora = load_corpora(cfg)
        plan = make_plan(cfg, corpora)
        check_paths(plan)
        check_sizes(plan, corpora)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.sweep.enabled:
        if args.dry_run:
            print(f"sweep of {cfg.model.cell} on {cfg.data.corpus}: " + cfg.sweep.sampler)
            return 0
        from study.sweep import run_sweep

        try:
            out = run_sweep(cfg, workers=args.workers, progress=not args.no_progress)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"\n{out['complete']} complete trials in {out['minutes']:.1f} min",
              file=sys.stderr)
        if cfg.tracking.enabled:
            where_to_browse(cfg)
        return 0
    if args.dry_run:
        print_plan(cfg, plan, corpora, estimate=not args.no_estimate,
                   workers=args.workers or 1, seconds=args.calibrate_seconds,
                   progress=not args.no_progress)
        return 0
    try:
        rows = run_ablation(cfg, plan, corpora, resume=args.resume, force=args.force,
                            progress=not args.no_progress, workers=args.workers or 1)
    except (DataError, CheckpointError) as e:  # the message names the file and the fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(rows)
    print(f"\n{len(rows)} runs in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    if cfg.tracking.enabled:
        where_to_browse(cfg)
    failed = [r for r in rows if not ok(r)]
    if failed:
        print(f"{len(failed)} of {len(rows)} runs did not finish: "
              + "; ".join(f"{r['variant']} on {r['dataset']}: {r['status']}" for r in failed),
              file=sys.stderr)
    return 0 if not failed else 1


def where_to_browse(cfg) -> None:
    """The store, and the link to the experiment's runs table in the MLflow UI: on the
    tracking server itself when the store is one, else on the UI `make ui` starts."""
    from study import ui
    from study.tracking import tracking_uri

    uri = tracking_uri(cfg.tracking)
    found = [e for e in ui.experiments(uri) if e.name == cfg.tracking.experiment]
    remote = uri.startswith(("http://", "https://"))
    command = ("`make ui`" if uri == tracking_uri(TrackingConfig())
               else f"`python -m study.ui --store {uri}`")
    print(f"MLflow: {uri}" + ("" if remote else f"; browse with {command}, then open") + ":",
          file=sys.stderr)
    # a tracking server this harness did not start has no shared view of the losses
    ui.print_links(uri, uri if remote else ui.DEFAULT_BASE_URL, file=sys.stderr, found=found,
                   shared_view=not remote)


if __name__ == "__main__":
    sys.exit(main())
