"""SIGTERM handled as Ctrl-C is: `timeout`, Docker and Slurm stop a job with SIGTERM, and
the runs it leaves must end KILLED with how to continue, not stay RUNNING."""

from __future__ import annotations

import signal


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _raise_terminated(signum, frame):
    raise Terminated()


def sigterm_as_interrupt() -> None:
    """From now on SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def exit_code(error: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal's number."""
    return 128 + (signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT)


def join_workers(procs) -> list[int]:
    """Start worker processes and wait for them; if this process is interrupted (Ctrl-C,
    SIGTERM), stop them too (SIGTERM: each ends its run KILLED) before going on. Returns
    their exit codes."""
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
        raise
    return [p.exitcode for p in procs]
