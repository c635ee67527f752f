"""`python tests/kill_after.py N ARGS...`: run `python -m study.run ARGS...` in this process
and end it abruptly right after epoch N has been checkpointed and logged (os._exit(137), no
clean-up, as SIGKILL would), through train()'s epoch callback: the fault injection of the
resume and recovery tests."""

import os
import runpy
import sys

from study import train

N = int(sys.argv[1])
_train = train.train


def train_then_die(*args, on_epoch=None, **kwargs):
    def each_epoch(report):
        if on_epoch is not None:
            on_epoch(report)
        if report.epoch == N:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(137)

    return _train(*args, on_epoch=each_epoch, **kwargs)


train.train = train_then_die
sys.argv = ["study.run", *sys.argv[2:]]
runpy.run_module("study.run", run_name="__main__", alter_sys=True)
