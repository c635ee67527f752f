"""The README's "Scaling out" for real: Optuna on a PostgreSQL server, runs on an MLflow
tracking server backed by PostgreSQL, two workers, one of them SIGKILLed mid-trial.

Needs PostgreSQL's server binaries (Debian: `apt install postgresql`) and psycopg
(`pip install -e '.[dev]'`). Skipped on a machine without them, except where
STUDY_REQUIRE_SCALEOUT=1 (CI), where their absence is a failure.
"""

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from study.sweep.space import clip_label

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("STUDY_REQUIRE_SCALEOUT") == "1"
GRID = {"k2": [8, 16], "clip": ["none", "norm:1"]}
# the README's plain URL: SQLAlchemy 2.1 reads it as psycopg 3, which the dev extras install
PG = "postgresql"


def _pg_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's newest version."""
    found = shutil.which("initdb"), shutil.which("pg_ctl")
    if all(found):
        return Path(os.path.realpath(found[0])).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parent.parent.name)
                      if Path(p).parent.parent.name.isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _missing() -> str | None:
    if _pg_bin() is None:
        return ("PostgreSQL's server (initdb, pg_ctl) is not installed: "
                "`apt install postgresql`")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: `.venv/bin/pip install -e '.[dev]'`"
    return None


def _need_scaleout():
    why = _missing()
    if why is None:
        return
    if REQUIRED:
        pytest.fail(f"STUDY_REQUIRE_SCALEOUT=1 but {why}")
    pytest.skip(f"scale-out test: {why}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, interval: float = 0.2, proc=None):
    """Poll `check` until it returns something truthy; fail after `timeout` seconds or
    when `proc` (a Popen) has ended."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process ended (code {proc.returncode}) first")
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


def stop_group(proc: subprocess.Popen) -> None:
    """End a process started with start_new_session=True, and its children."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(15)


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no output)"


# ---------------------------------------------------------------------------------------
# servers


@pytest.fixture
def postgres(request):
    """A PostgreSQL server on 127.0.0.1 with databases `optuna` and `mlflow`; its port."""
    _need_scaleout()
    import psycopg

    bindir = _pg_bin()
    # PostgreSQL refuses to run as root: as root, its files belong to the postgres user,
    # in a folder that user can reach (pytest's tmp_path is private to root)
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="study-pg-"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    base.chmod(0o755)
    prefix = []
    if as_root:
        shutil.chown(base, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, sock, log = base / "data", base / "sock", base / "server.log"
    sock.mkdir()
    if as_root:
        shutil.chown(sock, "postgres", "postgres")
    port = free_port()

    def pg(*args, **kw):
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120,
                              **kw)

    r = pg(str(bindir / "initdb"), "-A", "trust", "-U", "postgres", "-E", "UTF8", "-D",
           str(data))
    assert r.returncode == 0, r.stdout + r.stderr

    def stop():
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")

    request.addfinalizer(stop)  # before the folder goes (finalizers run last in, first out)
    r = pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
           "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off", "start")
    assert r.returncode == 0, r.stdout + r.stderr + tail(log)
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute("CREATE DATABASE optuna")
        conn.execute("CREATE DATABASE mlflow")
    return port


@pytest.fixture
def mlflow_server(postgres, tmp_path, request):
    """An MLflow tracking server on 127.0.0.1, runs in PostgreSQL; its URL."""
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", f"{PG}://postgres@127.0.0.1:{postgres}/mlflow",
             "--artifacts-destination", str(tmp_path / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    request.addfinalizer(lambda: stop_group(proc))
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    # the first start creates the schema: tens of seconds
    try:
        wait_for("the MLflow server's /health", healthy, 120, 0.5, proc)
    except pytest.fail.Exception:
        print(tail(log), file=sys.stderr)
        raise
    return url


# ---------------------------------------------------------------------------------------
# the test


def corpora_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if shared.is_dir():
        env["STUDY_DATA_DIR"] = str(shared)
    return env


def write_config(tmp_path: Path, optuna_url: str, mlflow_url: str) -> Path:
    cfg = {
        "name": "scaleout",
        "data": {"corpus": "warpeace", "max_chars": 30000},
        "model": {"cell": "lstm", "hidden_size": 16, "num_layers": 1},
        # three epochs of a few seconds: time to kill a worker mid-trial
        "train": {"batch_size": 8, "epochs": 3, "patience": None, "sample_chars": 0,
                  "eval_seq_len": 200},
        "probes": {"enabled": False},
        "tracking": {"uri": mlflow_url, "experiment": "scaleout",
                     "results_dir": str(tmp_path / "results")},
        "sweep": {"enabled": True, "sampler": "grid", "trials": 4, "pruner": "none",
                  "storage": optuna_url, "k2_min": 4, "k2_max": 64,
                  "grid_k2": GRID["k2"], "grid_k1_fraction": [1.0],
                  "grid_clip": GRID["clip"]},
    }
    path = tmp_path / "scaleout.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_ticks(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_two_workers_on_postgresql_and_an_mlflow_server_survive_a_killed_worker(
        postgres, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    t0 = time.monotonic()
    optuna_url = f"{PG}://postgres@127.0.0.1:{postgres}/optuna"
    cfg = write_config(tmp_path, optuna_url, mlflow_server)
    out = tmp_path / "sweep.log"
    with open(out, "w") as f:
        cmd = subprocess.Popen(
            [sys.executable, "-m", "study.run", str(cfg), "--workers", "2", "--no-progress"],
            cwd=ROOT, env=corpora_env(), stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        # both workers in the middle of a trial: its MLflow run made, an epoch reported
        storage = []  # one, made once: each RDBStorage keeps its own pooled connections

        def training():
            # not before the command made the study: opening the storage creates the
            # schema, which must not race with the command's own creation
            if "counted so far" not in out.read_text(errors="replace"):
                return None
            storage[:] = storage or [optuna.storages.RDBStorage(optuna_url)]
            with contextlib.suppress(KeyError):
                study = optuna.load_study(study_name="scaleout", storage=storage[0])
                busy = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                        if "mlflow_run_id" in t.user_attrs and t.intermediate_values]
                if len({t.user_attrs["worker"] for t in busy}) == 2:
                    return busy
            return None

        busy = wait_for("both workers in training", training, 180, 0.1, cmd)
        # the worker started second: the command is still waiting on the first one, so
        # the killed process stays unreaped (a zombie) while the other worker goes on
        victim = max(busy, key=lambda t: int(t.user_attrs["worker"].rsplit(":", 2)[1]))
        host, pid, ticks = victim.user_attrs["worker"].rsplit(":", 2)
        pid = int(pid)
        # only ever a worker of this command: same machine, same process, our child
        assert host == socket.gethostname()
        assert start_ticks(pid) == ticks and parent_pid(pid) == cmd.pid, "not our worker"
        os.kill(pid, signal.SIGKILL)
        try:
            code = cmd.wait(300)
        except subprocess.TimeoutExpired:
            pytest.fail("the sweep did not end within 300 s:\n" + tail(out))
    finally:
        stop_group(cmd)
    log = out.read_text(errors="replace")
    print(f"\n--- sweep output (killed worker {pid} in trial {victim.number}; "
          f"{time.monotonic() - t0:.0f} s) ---\n" + log[-6000:])

    # Optuna: every grid point complete exactly once; the killed trial failed and retried
    study = optuna.load_study(study_name="scaleout", storage=optuna_url)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    points = sorted((t.params["k2"], clip_label(t.params)) for t in complete)
    wanted = sorted((k2, c) for k2 in GRID["k2"] for c in GRID["clip"])
    assert points == wanted, [(t.number, t.state.name, t.params) for t in trials]
    dead = next(t for t in trials if t.number == victim.number)
    assert dead.state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == dead.params
    assert "stopped during the trial" in retries[0].user_attrs["retry_reason"]
    assert "queued again" in retries[0].user_attrs["retry_reason"]
    assert retries[0].state == TrialState.COMPLETE
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len(trials) == len(wanted) + 1  # nothing else trained

    # MLflow, read back through the server: nothing left RUNNING, one finished run a point
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("scaleout")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert not [(r.info.run_name, r.info.status) for r in runs
                if r.info.status not in ("FINISHED", "FAILED", "KILLED")]
    trial_runs = [r for r in runs if r.data.tags.get("kind") == "trial"]
    finished = sorted((int(r.data.tags["k2"]), r.data.tags["clip"]) for r in trial_runs
                      if r.info.status == "FINISHED")
    assert finished == wanted
    by_id = {r.info.run_id: r for r in trial_runs}
    assert by_id[dead.user_attrs["mlflow_run_id"]].info.status == "KILLED"
    for t in complete:
        assert by_id[t.user_attrs["mlflow_run_id"]].info.status == "FINISHED"
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "study"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trial_runs)

    # the command: every trial completed despite the dead worker, so it succeeded
    assert parent.info.status == "FINISHED", parent.data.tags.get("failure_reason")
    assert code == 0, log[-3000:]
