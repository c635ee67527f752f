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
import hashlib
import itertools
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from study import config as config_mod
from study.config import Config, ConfigError, run_hash, updated
from study.data import Corpus, DataError, load_corpus

LN2 = math.log(2)


@dataclass
class RunSpec:
    variant: str
    dataset: str
    seed: int
    cfg: Config
    hash: str
    axes: dict  # the values of ablation.grid's extra axes for this run

    @property
    def name(self) -> str:
        extra = "".join(f"-{k.rsplit('.', 1)[-1]}{v}" for k, v in self.axes.items())
        return f"{self.variant}-{self.dataset}{extra}-s{self.seed}"


def datasets_of(cfg: Config) -> list[str]:
    if cfg.data.path is not None:
        return [cfg.data.corpus]
    return cfg.ablation.datasets or [cfg.data.corpus]


def load_corpora(cfg: Config) -> dict[str, Corpus]:
    """Every corpus the config names, found, decoded and encoded (the slow checks first)."""
    cache = Path(cfg.tracking.results_dir) / "cache"
    return {name: load_corpus(updated(cfg, {"data.corpus": name}).data, cache)
            for name in datasets_of(cfg)}


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
            vocab = corpora[child.data.corpus].vocab_size
            child = updated(child, {"model.hidden_size": matched_width(
                child.model, vocab, g.match_params_to)})
        extra = {k: changes[k] for k, _ in axes[2:-1]}
        plan.append(RunSpec(child.model.cell, child.data.corpus, child.train.seed, child,
                            run_hash(child), extra))
    return plan


def config_digest(cfg: Config) -> str:
    blob = json.dumps({k: v for k, v in config_mod.to_dict(cfg).items() if k != "tracking"},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------


def run_ablation(cfg: Config, plan: list[RunSpec], corpora: dict[str, Corpus], *,
                 resume: bool = False, force: bool = False, progress: bool = True) -> list[dict]:
    from study.train import train

    store = None
    if cfg.tracking.enabled:
        from study import tracking

        store = tracking.Store(cfg.tracking)  # experiment created here, before any run
    results_dir = Path(cfg.tracking.results_dir)
    ckpt_root = results_dir / "checkpoints" / cfg.tracking.experiment
    digest = config_digest(cfg)
    parent = None
    if store is not None:
        prior = None if force else next(iter(store.find(config_hash=digest, kind="ablation")),
                                        None)
        if prior is not None:
            parent = store.start(cfg.name, {}, run_id=prior.info.run_id)
        else:
            parent = store.start(cfg.name, {"kind": "ablation", "config_hash": digest,
                                            "mlflow.note.content": _describe(cfg, plan)})
            parent.log_config(cfg)
    rows = []
    try:
        for n, spec in enumerate(plan, 1):
            corpus = corpora[spec.dataset]
            head = f"[{n}/{len(plan)}] {spec.variant} on {spec.dataset} (seed {spec.seed})"
            done = store.completed(spec.hash) if store and not force else None
            if done is not None:
                print(f"{head}: already finished in run {done.info.run_id}, skipped "
                      "(--force retrains)", file=sys.stderr)
                rows.append(_row_from_run(spec, done))
                continue
            print(f"{head}: {corpus.vocab_size} symbols, "
                  f"{len(corpus.splits['train']):,} train chars", file=sys.stderr)
            ckpt_dir = ckpt_root / spec.hash
            tracker, resuming = _child_tracker(store, parent, spec, corpus, ckpt_dir, resume)
            if not resuming:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            try:
                res = train(spec.cfg, corpus, tracker, ckpt_dir, resume=resuming,
                            progress=progress)
            except KeyboardInterrupt:
                if tracker is not None:
                    tracker.end("KILLED", "interrupted; continue with --resume")
                raise
            except Exception as e:
                if tracker is not None:
                    tracker.end("FAILED", f"{type(e).__name__}: {e}")
                raise
            if tracker is not None:
                if res.status == "finished" and cfg.tracking.log_checkpoint:
                    tracker.log_artifact(ckpt_dir / "best.pt", "checkpoint")
                tracker.end("FINISHED" if res.status == "finished" else "FAILED", res.reason)
            rows.append(_row_from_result(spec, res, tracker.run_id if tracker else ""))
    except BaseException as e:
        if parent is not None:
            parent.end_after(e, "re-run with --resume to continue")
        raise
    if parent is not None:
        table = summary_table(rows)
        parent.log_text(table.to_csv(index=False), "summary.csv")
        parent.log_text(_markdown(table), "summary.md")
        failed = sum(r["status"] != "finished" for r in rows)
        parent.set_tags({"runs": len(rows), "failed_runs": failed})
        parent.end("FINISHED")
    return rows


def _child_tracker(store, parent, spec: RunSpec, corpus: Corpus, ckpt_dir: Path,
                   resume: bool):
    """The MLflow run for one child, and whether training resumes from a checkpoint."""
    has_ckpt = (ckpt_dir / "last.pt").is_file()
    if store is None:
        return None, resume and has_ckpt
    prior = store.unfinished(spec.hash)
    if prior is not None and resume:
        return store.start(spec.name, {}, run_id=prior.info.run_id), has_ckpt
    if prior is not None:
        print(f"  an interrupted run of this configuration exists ({prior.info.run_id}); "
              "starting anew (use --resume to continue it)", file=sys.stderr)
        store.client.set_tag(prior.info.run_id, "failure_reason",
                             "interrupted; superseded by a new run started without --resume")
        store.client.set_terminated(prior.info.run_id, "KILLED")
    tracker = store.start(spec.name, {
        "kind": "train", "variant": spec.variant, "dataset": spec.dataset,
        "seed": spec.seed, "config_hash": spec.hash, "data_sha256": corpus.sha256,
        "vocab_size": corpus.vocab_size, "num_layers": spec.cfg.model.num_layers,
        "hidden_size": spec.cfg.model.hidden_size,
        # the row of Karpathy15's Table 1: the width before any parameter matching
        "row_width": spec.axes.get("model.hidden_size", spec.cfg.model.hidden_size)
        if spec.cfg.ablation.match_params_to else spec.cfg.model.hidden_size}, parent=parent)
    tracker.log_config(spec.cfg)
    return tracker, False


def _row(spec: RunSpec, run_id: str, status: str, params: int, epochs: int,
         best_val: float, test: float, seconds: float) -> dict:
    m = spec.cfg.model
    return {"variant": spec.variant, "dataset": spec.dataset, "layers": m.num_layers,
            "hidden": m.hidden_size, "seed": spec.seed, "params": params, "epochs": epochs,
            "best val nats/char": best_val, "test nats/char": test,
            "test bits/char": test / LN2, "minutes": seconds / 60, "status": status,
            "run_id": run_id}


def _row_from_result(spec: RunSpec, res, run_id: str) -> dict:
    status = res.status + (f" ({res.reason})" if res.reason else "")
    return _row(spec, run_id, status, res.num_params, res.epochs, res.best_val, res.test,
                res.seconds)


def _row_from_run(spec: RunSpec, run) -> dict:
    m, info = run.data.metrics, run.info
    secs = (info.end_time - info.start_time) / 1000 if info.end_time else math.nan
    return _row(spec, info.run_id, "finished (earlier run)",
                int(run.data.tags.get("num_params", 0)), int(m.get("epochs_trained", 0)),
                m.get("best_val_nats_per_char", math.nan), m.get("test_nats_per_char", math.nan),
                secs)


def summary_table(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def _markdown(df) -> str:
    cols = list(df.columns)
    fmt = [(lambda v: f"{v:.4f}") if df[c].dtype.kind == "f" else str for c in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(f(r[c]) for f, c in zip(fmt, cols, strict=True)) + " |")
    return "\n".join(lines) + "\n"


def _describe(cfg: Config, plan: list[RunSpec]) -> str:
    m, t = cfg.model, cfg.train
    grid = "".join(f" × {k} {v}" for k, v in cfg.ablation.grid.items())
    match = (f" (widths matched to {cfg.ablation.match_params_to}'s parameter count)"
             if cfg.ablation.match_params_to else "")
    return (f"{cfg.name}: {len(plan)} runs — variants {sorted({p.variant for p in plan})} × "
            f"datasets {sorted({p.dataset for p in plan})}{grid} × seeds "
            f"{sorted({p.seed for p in plan})}; {m.num_layers}×{m.hidden_size} units{match}, "
            f"{t.optimizer} lr {t.lr:g}, batch {t.batch_size}, seq {t.seq_len}, "
            f"up to {t.epochs} epochs. Losses in nats/char (bits = nats / ln 2).")


def print_summary(rows: list[dict]) -> None:
    if not rows:
        return
    df = summary_table(rows).drop(columns=["run_id"])
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 20,
                                             "display.float_format", "{:.4f}".format):
        print("\nSummary (losses in nats/char and bits/char; test split from the best-val "
              "checkpoint):")
        print(df.to_string(index=False))


def print_plan(cfg: Config, plan: list[RunSpec], corpora: dict[str, Corpus]) -> None:
    from study.model import count_params

    print(_describe(cfg, plan))
    for spec in plan:
        c = corpora[spec.dataset]
        n = count_params(spec.cfg.model, c.vocab_size)
        print(f"  {spec.name:36s} {spec.cfg.model.num_layers}x{spec.cfg.model.hidden_size:<5d} "
              f"{n:>10,} params  hash {spec.hash}  corpus {c.path} ({len(c.ids):,} chars, "
              f"{c.vocab_size} symbols)")


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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--workers", type=int, metavar="N",
                   help="sweeps: local worker processes (overrides sweep.workers)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        cfg = config_mod.load(args.config, args.set)
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers {args.workers}: need at least 1")
        corpora = load_corpora(cfg)
        plan = make_plan(cfg, corpora)
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
        return 0
    if args.dry_run:
        print_plan(cfg, plan, corpora)
        return 0
    rows = run_ablation(cfg, plan, corpora, resume=args.resume, force=args.force,
                        progress=not args.no_progress)
    print_summary(rows)
    print(f"\n{len(rows)} runs in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    if cfg.tracking.enabled:
        from study.tracking import tracking_uri

        print(f"MLflow: {tracking_uri(cfg.tracking)} (experiment {cfg.tracking.experiment!r});"
              " browse with `make ui`", file=sys.stderr)
    return 0 if all(r["status"].startswith("finished") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
