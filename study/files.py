"""Files the harness writes and reads back: whole or not at all, tensors and plain data only.

Checkpoints and the corpus cache are written atomically (a reader sees the old file or the
new one, never half of one) and read with `torch.load(weights_only=True)`, which rebuilds
tensors, dicts, lists, tuples, str, int, float, bool and None and nothing else: a pickle
that names any other Python callable is refused before it runs
(https://pytorch.org/docs/stable/notes/serialization.html#weights-only).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch


class UnreadableFile(RuntimeError):
    """A file `load_plain` will not use; the message says why, without the path."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path | str | None):
    """Hold an exclusive lock on `path` (created if missing) between the processes of this
    machine while the block runs; no lock at all when path is None."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write(path: Path, write) -> None:
    """Call write(f) on a hidden sibling file, fsync it and rename it over `path`; on any
    error the sibling is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: Path) -> None:
    """Put a finished sibling file in place of `path`: its data reaches the disk before the
    name points at it, so a crash leaves the old file or the new one, never half."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    """torch.save, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_plain(path: Path) -> Any:
    """torch.load restricted to tensors and plain types; UnreadableFile says what is wrong
    (OSError, e.g. a missing file, passes through)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as e:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if named or zipfile.is_zipfile(path):
            what = f"holds a pickled call to {named.group(1)}" if named else \
                "holds Python objects other than tensors and plain types"
            raise UnreadableFile(f"{what}: it is not a plain-tensor checkpoint and will not "
                                 "be executed") from None
        raise UnreadableFile("is truncated or corrupt, or not a checkpoint (not a file "
                             "torch.save wrote)") from None
    except Exception as e:  # torch reports damage as RuntimeError, EOFError, KeyError ...
        detail = str(e).split(". ")[0].strip()
        reason = f"{type(e).__name__}: {detail}" if detail else type(e).__name__
        raise UnreadableFile(f"is truncated or corrupt, or not a checkpoint ({reason})") \
            from None
