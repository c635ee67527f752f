"""`python -m study.inspect RUN_ID`: re-render unit traces from a logged run's checkpoint.

    python -m study.inspect RUN_ID                          # best units of every concept
    python -m study.inspect RUN_ID --concept in_quotes      # the best units of one concept
    python -m study.inspect RUN_ID --unit 2:37 --text f.txt # one unit (layer:index[:c|h])
    python -m study.inspect RUN_ID [RUN_ID ...] --probe     # run the probes again, log them
    python -m study.inspect models:/m-...                   # a logged model (its run's)

The model is rebuilt from the run's checkpoint artifact (its config and vocabulary travel
with it); the text is the run's validation split unless --text names a UTF-8 file.
Traces are written under --out (default results/inspect/RUN_ID/) and, with --log, added
to the run's artifacts under inspect/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import webbrowser
from dataclasses import replace
from pathlib import Path

import numpy as np

from study import tracking
from study.data import DataError, load_corpus, read_text
from study.logged import RunError, load_run, load_with_overrides  # noqa: F401 (re-exported)
from study.logged import load_run_or_say_why as _load_run_or_say_why
from study.model import CharLM
from study.probes import read, run_probes, trace_html, unit_scores, write_traces
from study.probes.concepts import CONCEPTS
from study.runner import log_probes
from study.train import seed_everything


def parse_unit(spec: str, model: CharLM) -> tuple[int, int, str]:
    parts = spec.split(":")
    try:
        layer, index = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise SystemExit(f"error: --unit {spec!r}: expected LAYER:INDEX[:c|h], e.g. 2:37") from None
    default = "c" if model.cell.has_cell_state else "h"
    state = parts[2] if len(parts) > 2 else default
    L, H = len(model.layers), model.cfg.hidden_size
    if not 1 <= layer <= L or not 0 <= index < H or state not in ("c", "h") or \
            (state == "c" and not model.cell.has_cell_state):
        raise SystemExit(f"error: --unit {spec!r}: layers are 1..{L}, units 0..{H - 1}, state "
                         f"{'c or h' if model.cell.has_cell_state else 'h'}")
    return layer, index, state


def reprobe(run_ids: list[str], overrides: list[str], tracking_uri: str | None) -> int:
    """Run the probes of each run again on its best checkpoint and log them to it."""
    for run_id in run_ids:
        loaded = load_with_overrides(run_id, overrides, ("probes.",), tracking_uri)
        if loaded is None:
            return 2
        model, cfg, corpus, uri, run_id = loaded
        print(f"probing run {run_id} ({cfg.model.cell} on {cfg.data.corpus})", file=sys.stderr)
        run = tracking.open_run(uri, run_id)
        result = _probe(run, model, corpus, cfg)
        if not result.ok:  # the run says so, as a run whose probes failed after training does
            reason = "probes failed (study.inspect --probe): " + "; ".join(
                f"{k}: {v}" for k, v in result.failed.items())
            run.end("FAILED", reason)
            print(f"error: run {run_id}: {reason}", file=sys.stderr)
            return 1
        if run.tags().get("failure_reason", "").startswith("probes failed"):
            run.end("FINISHED")  # probed again successfully: the run is whole
    return 0


def _probe(run, model: CharLM, corpus, cfg):
    """The run's full probes on its model, logged to it (as after training)."""

    def initial_model() -> CharLM:  # the same initial weights, rebuilt from the seed
        seed_everything(cfg.train.seed)
        return CharLM(corpus.vocab_size, cfg.model)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probes"
        out.mkdir()
        result = run_probes(model, corpus, cfg.probes, out,
                            f"{cfg.model.cell} on {corpus.name}",
                            init_model=initial_model if cfg.probes.error_flow else None)
        log_probes(run, result, out)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.inspect", description=__doc__.split("\n")[0])
    p.add_argument("run_id", nargs="+", help="MLflow run id(s), or a logged model's "
                   "models:/<id>; several only with --probe")
    p.add_argument("--probe", action="store_true",
                   help="run the run's probes again (current concepts, --set probes.*) and "
                        "log them to the run, replacing the earlier ones")
    p.add_argument("--set", action="append", default=[], metavar="probes.KEY=VALUE",
                   help="with --probe: change a probes setting, e.g. probes.chars=50000")
    p.add_argument("--text", help="a UTF-8 file to draw over (default: the validation split)")
    p.add_argument("--unit", help="LAYER:INDEX[:c|h], layers from 1; c is tanh(c)")
    p.add_argument("--concept", choices=sorted(CONCEPTS), help="draw this concept's best units")
    p.add_argument("--chars", type=int, default=20000, help="characters read (and scored)")
    p.add_argument("--trace-chars", type=int, default=1500, help="characters drawn per trace")
    p.add_argument("--top", type=int, default=3, help="units per concept")
    p.add_argument("--out", help="folder for the traces (default results/inspect/RUN_ID)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default as study.run's)")
    p.add_argument("--log", action="store_true", help="also log the traces to the run")
    p.add_argument("--open", action="store_true", help="open the trace page in a browser")
    args = p.parse_args(argv)
    if args.probe:
        return reprobe(args.run_id, args.set, args.tracking_uri)
    if len(args.run_id) > 1:
        p.error("several run ids only with --probe")
    args.run_id = args.run_id[0]

    loaded = _load_run_or_say_why(args.run_id, args.tracking_uri)
    if loaded is None:
        return 2
    model, cfg, vocab, uri, args.run_id = loaded
    try:
        if args.text:
            ids = vocab.encode(read_text(Path(args.text))[:args.chars])
        else:
            corpus = load_corpus(cfg.data, Path(cfg.tracking.results_dir) / "cache")
            ids = corpus.splits["val"][:args.chars]
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    probe_cfg = replace(cfg.probes, streams=1, warmup=min(cfg.probes.warmup, len(ids) // 10),
                        top_units=args.top, trace_chars=args.trace_chars)
    acts = read(model, ids, vocab.decode, probe_cfg)
    out = Path(args.out or Path(cfg.tracking.results_dir) / "inspect" / args.run_id)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{cfg.model.cell} on {cfg.data.corpus} (run {args.run_id[:8]})"
    if args.unit:
        layer, index, state = parse_unit(args.unit, model)
        vals = acts.states[(layer, state)][:, index].astype(np.float32)
        n = min(len(acts.text), args.trace_chars)
        label = f"layer {layer} {'tanh(c)' if state == 'c' else 'h'}[{index}]"
        page = out / f"unit_L{layer}{state}{index}.html"
        page.write_text(trace_html(acts.text[:n], vals[:n], f"{title}: {label}"),
                        encoding="utf-8")
        pages = [page]
    else:
        scores = unit_scores(acts, [args.concept] if args.concept else None)
        links = write_traces(acts, scores, out / "traces", probe_cfg, title)
        for e in links:
            print(f"  {e['concept']:16s} #{e['rank']} {e['unit']}")
        pages = [out / "traces.html"]
    for page in pages:
        print(f"wrote {page}")
    if args.log:
        tracking.open_run(uri, args.run_id).log_artifacts(out, "inspect")
        print(f"logged to run {args.run_id} under inspect/")
    if args.open:
        webbrowser.open(pages[0].resolve().as_uri())
    return 0


if __name__ == "__main__":
    sys.exit(main())
