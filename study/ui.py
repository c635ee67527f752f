"""`python -m study.ui [--store URI] [--host H] [--port P]`: the MLflow UI, light and
opening on the runs.

Prints one link per experiment, then runs `mlflow ui` in the foreground (Ctrl-C stops it).
`print_links` is what `study.run` prints at its end; `start()` runs the same server in the
background for the tests. This module does not import mlflow (study/tracking/ does): it
reads the store through `study.tracking.Reader`, starts the venv's `mlflow` command, and
talks to the server over its REST API.

What each setting does and why, as read in MLflow 3.17.2's source (mlflow/server/ and the
UI bundle mlflow/server/js/build/static/js) and checked in headless Chromium with a fresh
profile:

- `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`. By default `mlflow ui` with a SQL store also
  starts a job runner and seven huey consumers (mlflow/server/__init__.py, "job execution";
  they serve GenAI jobs this harness never submits). Measured on the ablation store after
  the first page loads: `--workers 1` alone is 10 processes, 2.4 GB RSS (1.8 GB PSS); the
  default 4 workers 15 processes, 3.2 GB; with job execution off and `--workers 1`,
  2 processes (the `mlflow` launcher and uvicorn), 0.49 GB RSS, up in 5 s.
  (`MLFLOW_ENABLE_AI_GATEWAY=false` changed nothing measurable.)
- `--workers 1`, and `--uvicorn-opts --no-access-log` (no line per request).
- The landing page. The experiment page's kind comes from the URL parameter
  `workflowType` (`machine_learning` | `genai`), else from local storage
  `mlflow.workflowType`, default `genai`: a fresh browser opening `/#/experiments/<id>`
  lands on the GenAI overview (`.../overview/usage`). `?workflowType=machine_learning`
  lands on the runs table; the run page takes it too (`/#/experiments/<e>/runs/<r>?
  workflowType=machine_learning`), and its breadcrumb then says "Runs", not "Evaluations".
- The runs table. Its URL state is only the search facets `searchFilter`, `orderByKey`,
  `orderByAsc`, `startTime`, `lifecycleFilter`, `modelVersionFilter`, `datasetsFilter`
  (plus `workflowType`, `isPreview`, `viewStateShareKey`); which columns show, their order
  and widths, expanded parents and the run visibility live in local storage
  (`MLflowLocalStorage-1.1-ExperimentPage-["<id>"]-ReactComponentState`), which a server
  cannot seed. A fresh profile shows Run Name, Created, Dataset, Duration, Source, Models
  and no metric. What a server can seed is a *shared view*: an experiment tag
  `mlflow.sharedViewState.<key>` holding JSON (the "Share" button writes it compressed;
  plain JSON is accepted) of search facets and UI state (selectedColumns, columnOrder,
  columnWidths, runsHiddenMode, compareRunCharts, groupBy, ...; runsExpanded, runsPinned,
  runsHidden and runsVisibilityMap are dropped from shared views), opened by
  `/#/experiments/<id>/runs?viewStateShareKey=<key>` — and only when the URL carries no
  search facet of its own. Parent runs cannot be expanded that way, but the table nests
  child runs under their parent only when it is sorted by start time (or unsorted) with no
  search filter: sorted by a metric it lists every run flat. So `install_views` writes a
  view `study-losses` on every experiment (sort by test loss ascending — else the best
  validation loss — the loss columns and the variant / dataset / seed tags shown, the
  empty Dataset / Source / Models columns not, charts of every run), and `runs_link` opens
  it. Columns named for metrics a store does not have are simply not shown, so the view
  names the losses both ways (`loss/test_nats_per_char` and `test_nats_per_char`). The
  page shows a banner "You're viewing a shared view" with "Exit shared view". The view
  writes its facets into the URL, so a reload of that page keeps the sort (the flat list)
  but not the columns; "Override saved view" in the banner keeps the whole view in that
  browser (local storage), and following the printed link again re-applies it.
- The Assistant. No server setting turns it off in 3.17.2 (MLFLOW_ENABLE_REMOTE_ASSISTANT
  only decides whether non-local clients may use it). The UI offers it when the page's
  host name is `localhost`, `127.0.0.1` or `::1`, opens the panel by itself on the first
  load (local storage `mlflow.assistant.fab.autoOpenedOnFirstLoad_v1`) and remembers it
  open or closed (`mlflow.assistant.panelOpen_v1`): closing it once keeps it closed in
  that browser (checked: closed, reloaded, only its round button is left). Served on
  another loopback address it is not offered at all (checked: no panel, no button), so
  the default host here is 127.0.0.2 (Linux routes all of 127.0.0.0/8 to the loopback
  interface; it is as private as 127.0.0.1). MLflow's security middleware only knows
  127.0.0.1 and localhost as loopback, so for such a host the server is started with
  `--allowed-hosts <host>:<port>,localhost:*,127.0.0.1:*` and `--cors-allowed-origins
  http://<host>:<port>` (without them every page is 403 and every write is refused).
  `--host 127.0.0.1` gives MLflow's usual behaviour, Assistant included.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

DEFAULT_HOST = "127.0.0.2"  # a loopback address the UI does not offer the Assistant on
DEFAULT_PORT = 5000
DEFAULT_BASE_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
MLFLOW = Path(sys.executable).with_name("mlflow")  # the venv's command, beside its python

VIEW_KEY = "study-losses"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
SPLITS = ("test", "best_val", "val", "train")  # the sort prefers them in this order
TAG_COLUMNS = ("variant", "dataset", "seed")
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def loss_metrics(unit: str = "nats") -> list[str]:
    """The loss metrics' names, new (`loss/test_nats_per_char`) then old
    (`test_nats_per_char`), best first."""
    return [f"loss/{s}_{unit}_per_char" for s in SPLITS] + [f"{s}_{unit}_per_char"
                                                          for s in SPLITS]


def sort_metric(metric_names) -> str | None:
    """The metric the runs table is sorted by: the first loss a run has (test, then best
    validation, ...; the new names before the old)."""
    have = set(metric_names)
    return next((m for m in loss_metrics() if m in have), None)


def view_state(sort_by: str | None = "loss/test_nats_per_char") -> dict:
    """The shared view's JSON: runs sorted by `sort_by` ascending (flat, see the module
    docstring), the loss and tag columns shown, every run in the charts."""
    # the test loss in both units and the best validation loss (the split the runs were
    # selected on); every other loss is one click away under Columns. Old stores (names
    # without the loss/ section) get their own columns: those a store lacks are not shown
    shown = ("test_nats_per_char", "test_bits_per_char", "best_val_nats_per_char")
    losses = [f"metrics.`{p}{m}`" for p in ("loss/", "") for m in shown]
    state = {"searchFilter": "", "orderByAsc": True,
             "selectedColumns": losses + [f"tags.`{t}`" for t in TAG_COLUMNS],
             # wide enough for the whole name (the default cuts `loss/test_nats…`); the UI
             # applies widths only to the columns named in columnOrder (ids as in its DOM)
             "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", "duration",
                             *losses, *(f"tags.`{t}`" for t in TAG_COLUMNS)],
             "columnWidths": {c: round(6.1 * len(c)) for c in losses},
             "runsHiddenMode": "SHOW_ALL"}
    if sort_by:
        state["orderByKey"] = f"metrics.`{sort_by}`"
    else:  # nothing to sort by: newest first, children nested under their parent
        state.update(orderByKey="attributes.start_time", orderByAsc=False)
    return state


def runs_link(base_url: str, experiment_id: str, shared_view: bool = True) -> str:
    """The link that opens an experiment on its runs table in MLflow's model-training mode,
    through the shared view `install_views` writes (sorted by test loss, loss columns
    shown; without that view the UI says the share key does not exist), or without it
    (shared_view=False: a server this module did not start)."""
    query = urllib.parse.urlencode({"workflowType": "machine_learning"} | (
        {"viewStateShareKey": VIEW_KEY} if shared_view else {}))
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def run_link(base_url: str, experiment_id: str, run_id: str, tab: str = "",
             artifact: str = "") -> str:
    """A run's page (tab: "" overview, "model-metrics", "artifacts"; artifact: a path in
    the run's artifacts, which opens the artifacts tab on it), in model-training mode."""
    path = f"/#/experiments/{experiment_id}/runs/{run_id}"
    if artifact:
        path += "/artifacts/" + urllib.parse.quote(artifact)
    elif tab:
        path += "/" + tab
    return f"{base_url.rstrip('/')}{path}?workflowType=machine_learning"


@dataclass
class Experiment:
    name: str
    experiment_id: str
    runs: int
    sort_by: str | None


def experiments(uri: str) -> list[Experiment]:
    """The store's experiments, oldest first, with their number of runs and the metric
    their runs table is sorted by; the empty "Default" left out. StoreError when the store
    is not there. (Imports mlflow, through study.tracking.)"""
    from study.tracking import Reader

    reader = Reader(uri)
    out = []
    for name, eid in reader.experiment_ids().items():
        runs = reader.runs([name])
        if name == "Default" and not runs:
            continue
        out.append(Experiment(name, eid, len(runs), sort_metric(reader.metric_names(name))))
    return out


def _experiments_in_child(uri: str | None) -> tuple[str, list[Experiment]]:
    """(the store's URI, experiments(uri)) read by a short-lived child process, so that
    the process that waits on the server does not hold mlflow's ~400 MB. uri None: the
    default store, as study.run's (study.tracking.tracking_uri). UIError with the child's
    message (e.g. the store is missing)."""
    code = ("import dataclasses, json, sys\n"
            "from study.config import TrackingConfig\n"
            "from study.tracking import StoreError, tracking_uri\n"
            "from study.ui import experiments\n"
            "uri = sys.argv[1] or tracking_uri(TrackingConfig())\n"
            "try:\n"
            "    found = experiments(uri)\n"
            "except StoreError as e:\n"
            "    sys.exit(f'error: {e}')\n"
            "print(json.dumps([uri, [dataclasses.asdict(e) for e in found]]))\n")
    done = subprocess.run([sys.executable, "-c", code, uri or ""], capture_output=True,
                          text=True)
    if done.returncode != 0:
        msg = done.stderr.strip().splitlines()
        raise UIError((msg[-1] if msg else f"status {done.returncode}").removeprefix("error: "))
    uri, found = json.loads(done.stdout.strip().splitlines()[-1])
    return uri, [Experiment(**e) for e in found]


def print_links(uri: str, base_url: str = DEFAULT_BASE_URL, file: TextIO = sys.stdout,
                found: list[Experiment] | None = None, shared_view: bool = True) -> None:
    """One line per experiment: its name, its number of runs and the link to its runs."""
    found = experiments(uri) if found is None else found
    if not found:
        print(f"no experiments in {uri}", file=file)
        return
    width = max(len(e.name) for e in found)
    for e in found:
        runs = f"{e.runs} run{'s' * (e.runs != 1)}"
        link = runs_link(base_url, e.experiment_id, shared_view)
        print(f"  {e.name:<{width}}  {runs:>9}  {link}", file=file)


def install_views(base_url: str, found: list[Experiment]) -> None:
    """Write the shared view on every experiment, through the running server's REST API
    (an experiment tag; rewritten at every start, so it follows renamed metrics)."""
    for e in found:
        body = {"experiment_id": e.experiment_id, "key": VIEW_TAG,
                "value": json.dumps(view_state(e.sort_by))}
        req = urllib.request.Request(
            f"{base_url.rstrip('/')}/api/2.0/mlflow/experiments/set-experiment-tag",
            data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()


# ---------------------------------------------------------------------------------------
# the server


class UIError(RuntimeError):
    """A server that cannot start: the port is taken, or mlflow exits."""


def _needs_allow_list(host: str) -> bool:
    """A loopback address other than 127.0.0.1: MLflow's host check refuses it by
    default."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback and ip.version == 4 and host != "127.0.0.1"


def server_command(uri: str, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line (run it with SERVER_ENV in the environment)."""
    cmd = [str(MLFLOW), "ui", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", "1", "--uvicorn-opts", "--no-access-log"]
    if _needs_allow_list(host):
        cmd += ["--allowed-hosts", f"{host}:{port},localhost:*,127.0.0.1:*",
                "--cors-allowed-origins", f"http://{host}:{port}"]
    return cmd


def check_port(host: str, port: int) -> None:
    """UIError when the port cannot be bound on host (taken, or no such address)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == 98:  # EADDRINUSE
                raise UIError(f"port {port} on {host} is taken (another `mlflow ui`?); "
                              "choose another with --port") from None
            raise UIError(f"cannot listen on {host}:{port} ({e.strerror}); "
                          "try --host 127.0.0.1") from None


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, base_url: str, timeout: float,
                   log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise UIError(f"mlflow ui exited with status {proc.returncode}"
                          + (f":\n{tail}" if tail else ""))
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise UIError(f"mlflow ui did not answer on {base_url} within {timeout:.0f} s")
        time.sleep(0.25)


@dataclass
class Server:
    """A running `mlflow ui` (from start()); stop() ends it and what it started."""

    proc: subprocess.Popen
    url: str
    experiments: list[Experiment] = field(default_factory=list)

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            # the mlflow launcher forwards SIGINT to uvicorn; the group is ours (new session)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(uri: str, host: str = DEFAULT_HOST, port: int | None = None,
          log: str | Path | None = None, timeout: float = 90) -> Server:
    """Start the light server in the background (its own session) on port (default: a
    free one), wait until it answers, write the shared views; returns the Server. Output
    goes to log (default: discarded). study.tracking.StoreError for a missing store,
    UIError when it cannot start."""
    found = experiments(uri)
    port = free_port(host) if port is None else port
    check_port(host, port)
    with open(log, "wb") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
        proc = subprocess.Popen(server_command(uri, host, port), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **SERVER_ENV})
    server = Server(proc, f"http://{host}:{port}", found)
    try:
        _wait_until_up(proc, server.url, timeout, Path(log) if log else None)
        install_views(server.url, found)
    except BaseException:
        server.stop()
        raise
    return server


def serve(uri: str | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Run the server on the store at uri (default: study.run's) in the foreground until
    Ctrl-C / SIGTERM; the exit status (130 / 143 when stopped by Ctrl-C / SIGTERM, 1 when
    mlflow fails). UIError when the store is missing or the port taken."""
    uri, found = _experiments_in_child(uri)
    check_port(host, port)
    base = f"http://{host}:{port}"
    cmd = server_command(uri, host, port)
    print(f"starting the MLflow UI: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    # its own session: Ctrl-C reaches only this process, which hands mlflow one SIGINT
    # (a second one, straight to uvicorn, ends it with a traceback)
    proc = subprocess.Popen(cmd, env={**os.environ, **SERVER_ENV}, start_new_session=True)
    stopped_by = []

    def on_signal(signum, _frame):
        stopped_by.append(signum)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            _wait_until_up(proc, base, 90, None)
            install_views(base, found)
        except (UIError, urllib.error.URLError, OSError) as e:
            if not stopped_by:
                print(f"error: {e}", file=sys.stderr)
                on_signal(signal.SIGINT, None)
        if proc.poll() is None and not stopped_by:
            print(f"\nThe runs, by experiment (sorted by test loss), on {base}:")
            print_links(uri, base, found=found)
            print("Ctrl-C stops the server.", flush=True)
        try:
            proc.wait()
        except BaseException:
            proc.kill()
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped_by:
        print("stopped", file=sys.stderr)
        return 130 if stopped_by[0] == signal.SIGINT else 143
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m study.ui", description=__doc__.split("\n")[0]
                                 + " (see the module docstring for each setting)")
    ap.add_argument("--store", "--tracking-uri", dest="store",
                    help="MLflow tracking URI (default as study.run's: "
                    "$MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db)")
    ap.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default "
                    f"{DEFAULT_HOST}: loopback, and the UI offers no Assistant there; "
                    "127.0.0.1 gives MLflow's usual page)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help=f"port (default {DEFAULT_PORT})")
    args = ap.parse_args(argv)
    try:
        return serve(args.store, args.host, args.port)
    except UIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
