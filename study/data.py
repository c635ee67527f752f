"""Corpora, vocabulary, splits and the truncated-BPTT batch layout.

Corpora are found by name (`warpeace`, `linux`) or given as a path to any UTF-8 file.
A name is looked up in `$STUDY_DATA_DIR`, then in the project's `data/`, then downloaded
from its canonical address and verified by sha256; offline, one error names all three
places. Where the canonical digest is unknown (LK), a download with the canonical
character count is trusted on first use: its digest is pinned in `<file>.sha256` and every
later use is checked against the pin. A local copy with an unknown digest gets a warning.
Text is read exactly as stored (CR/LF kept, `newline=""`); the vocabulary is every
distinct character of the whole (possibly `max_chars`-truncated) text, so the validation
and test splits never meet an unknown character. The encoded text is cached under
`<results>/cache/`, keyed by the file's sha256 and verified by a checksum of its own; a
cache that fails the check is rebuilt from the text.

Splits are contiguous: the first 80% train, the next 10% validation, the rest test (WP;
LK uses 90/5/5, as in Karpathy15; a generated long-lag task, 80/10/10).

Generated corpora: `data.corpus` may name one of Hochreiter97's long-lag tasks (adding,
temporal_order, embedded_reber; study.tasks), generated from (data.lag, data.seed,
data.max_chars or 200,000 characters), written once under the cache folder, and from then
on read like any file; the corpus remembers its task, so that the target characters can be
scored apart (study.targets).

Batch layout (letters: T time, B batch streams, L stream length)
----------------------------------------------------------------
A split of N characters is cut into B streams of L = (N - 1) // B consecutive
characters; stream b holds inputs x[b·L : (b+1)·L] and targets shifted by one. At most
B characters at the end are dropped, so the streams tile the split:

    split:    a b c d e f g h i j k l m n o p q r s t u v w x ... (N chars)
    stream 0: a b c d e f g h         <- x[0:L]      (column 0 of the (L, B) grid)
    stream 1: i j k l m n o p         <- x[L:2L]     (column 1)
    ...
    inputs (L, B): row t holds the t-th character of every stream, read top to bottom

Truncated BPTT (Williams & Peng 1990; Sutskever13's TBPTT(k1, k2)): every k1 steps the
model takes one update that back-propagates through the last k2 >= k1 steps. Update u
predicts the k1 new steps [new, end) from a window [start, end) that begins k2 - k1 steps
earlier; the loss covers only the new steps. The hidden state entering a window is the
carried state at `start`, detached (no gradient flows past the window), taken from the
previous window's forward pass at its `carry` step. k1 = k2 is the common case: windows
do not overlap and the state at the end of one is the start of the next. The state is
reset to zero at the start of every epoch.

    k2 = 6, k1 = 2:   |-- k2 - k1 --|-k1-|
    window u:         [start ... new ... end)      loss on [new, end)
    window u+1:            [start' ... new'=end ... end')
                           start' = carry of window u
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from study.config import DataConfig
from study.corpora import CORPORA, DEFAULT_SPLITS, GENERATED_SPLITS, KnownCorpus
from study.files import (
    UnreadableFile,
    atomic_save,
    atomic_write,
    load_plain,
    publish,
    sha256_of,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class DataError(RuntimeError):
    """A corpus that cannot be used; the message says where we looked and what to do."""




def locate(name: str, *, download: bool = True) -> Path:
    """Where corpus `name` is: $STUDY_DATA_DIR, then data/, then a verified download."""
    info = CORPORA[name]
    places = []
    env = os.environ.get("STUDY_DATA_DIR")
    if env:
        places.append(Path(env) / info.filename)
    local = PROJECT_ROOT / "data" / info.filename
    places.append(local)
    for p in places:
        if p.is_file():
            return p
    tried = "\n".join(f"  - {p} (not found)" for p in places)
    if not env:
        tried = "  - $STUDY_DATA_DIR (not set)\n" + tried
    if not download:
        raise DataError(f"corpus {name!r} not found. Looked in:\n{tried}")
    try:
        _download(info, local)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise DataError(
            f"corpus {name!r} ({info.filename}) not found. Looked in:\n{tried}\n"
            f"  - download from {info.url} failed: {e}\n"
            f"Fix: set STUDY_DATA_DIR to a folder holding {info.filename}, or put the file "
            f"in {local.parent}/, or connect to the network.") from None
    return local


def pin_file(path: Path) -> Path:
    """Where the sha256 of a corpus trusted on first use is kept: next to it."""
    return path.with_name(path.name + ".sha256")


def _download(info: KnownCorpus, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {info.url} -> {dest}")
    with urllib.request.urlopen(info.url, timeout=30) as r, \
            tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        shutil.copyfileobj(r, tmp)
    part = Path(tmp.name)
    try:
        got = sha256_of(part)
        if got not in info.sha256:
            expected = " or ".join(info.sha256)
            if info.canonical:
                raise DataError(f"download of {info.url} has sha256 {got}, expected "
                                f"{expected}; not using it")
            n = _chars(part)
            if n != info.chars:
                size = f"{n} characters" if n is not None else "bytes that are not UTF-8"
                raise DataError(
                    f"download of {info.url} has sha256 {got} and {size}; expected sha256 "
                    f"{expected}, or (the canonical file's sha256 being unknown) exactly "
                    f"{info.chars} characters; not using it")
            # trust on first use: the character count matches, so pin this digest
            atomic_write(pin_file(dest), lambda f: f.write(f"{got}  {dest.name}\n".encode()))
            print(f"{dest.name}: sha256 {got} (canonical digest unknown; {info.chars} "
                  f"characters as expected), pinned in {pin_file(dest)}")
        publish(part, dest)  # checked first, then in place, whole
    finally:
        part.unlink(missing_ok=True)


def _chars(path: Path) -> int | None:
    try:
        return len(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return None


def check_known(name: str, path: Path, digest: str) -> None:
    """A known corpus's file against its pin (an error on mismatch) or its known digests
    (a warning: a user's own copy may differ on purpose)."""
    info, pin = CORPORA[name], pin_file(path)
    if pin.is_file():
        pinned = (pin.read_text().split() or ["(nothing)"])[0]
        if digest != pinned:
            raise DataError(
                f"{path} has sha256 {digest}, but {pin} pins {pinned} (its digest when it "
                f"was downloaded): the file changed since. Fix: delete both {path.name} and "
                f"{pin.name} to download it again, or restore the file")
    elif digest not in info.sha256:
        print(f"warning: {path} has sha256 {digest}, not a known copy of {info.about} "
              f"({' or '.join(info.sha256)}); results may not compare", file=sys.stderr)


def read_text(path: Path) -> str:
    """The file's text exactly as stored; one clear error if it is not usable text."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset "
                        f"{e.start} cannot be decoded ({e.reason}). Convert it first, e.g. "
                        f"`iconv -f latin1 -t utf-8 {path.name}`.") from None
    if not text:
        raise DataError(f"{path} is empty; a corpus needs text to train on")
    return text  # bytes.decode keeps "\r\n" as it is, like open(..., newline="")


class Vocabulary:
    """Characters <-> token ids; the characters sorted by code point, index = id."""

    def __init__(self, chars: str, name: str = "the model's"):
        self.chars, self.name = chars, name
        self.index = {c: i for i, c in enumerate(chars)}

    def encode(self, text: str) -> torch.Tensor:
        missing = sorted({c for c in text if c not in self.index})
        if missing:
            raise DataError(f"the text has {len(missing)} characters the model never saw "
                            f"(not in {self.name} vocabulary): {''.join(missing[:20])!r}; "
                            "use a text from the same corpus")
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return decode(self.chars, ids)


def decode(chars: str, ids) -> str:
    """The text of token ids (a tensor, array or list; id i is chars[i]), by one numpy
    gather of code points: iterating a tensor would make one tensor object per id (a few
    hundred bytes each: gigabytes for a corpus's train split)."""
    a = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    a = a.astype(np.int64, copy=False).reshape(-1)
    if not len(a):
        return ""
    if a.min() < -len(chars) or a.max() >= len(chars):
        raise IndexError(f"token id out of range for a vocabulary of {len(chars)} characters")
    codes = np.frombuffer(chars.encode("utf-32-le"), np.uint32)
    return codes[a].tobytes().decode("utf-32-le")


@dataclass
class Corpus:
    name: str
    path: Path
    sha256: str
    vocab: str  # the characters, sorted by code point; index = token id
    ids: torch.Tensor  # (N,) token ids of the whole text
    splits: dict[str, torch.Tensor]  # train/val/test slices of ids
    task: str | None = None  # a generated long-lag task (study.tasks), scored on its targets
    lag: int | None = None  # the task's lag, in characters

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.vocab, f"the {self.name}")

    def encode(self, text: str) -> torch.Tensor:
        return self.vocabulary.encode(text)

    def decode(self, ids) -> str:
        return decode(self.vocab, ids)


def corpus_key(cfg: DataConfig) -> str:
    """What identifies the corpus a data section gives: the whole section (a grid over
    data.lag or data.max_chars gives each value its own corpus)."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


GENERATED_CHARS = 200_000  # a generated task's default size (data.max_chars overrides)


def generated_file(cfg: DataConfig, cache_dir: Path | None) -> Path:
    """Write the long-lag task cfg.corpus names (study.tasks) to a text file, once per
    (task, lag, seed, size), and return its path: from there on it is a corpus like any
    other (checksummed, encoded, cached, logged as the run's dataset)."""
    from study import tasks

    chars = cfg.max_chars or GENERATED_CHARS
    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / \
        "study-cache"
    path = folder / "tasks" / f"{cfg.corpus}-lag{cfg.lag}-seed{cfg.seed}-{chars}.txt"
    if not path.is_file():
        text = tasks.generate(cfg.corpus, lag=cfg.lag, seed=cfg.seed, chars=chars)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def load_corpus(cfg: DataConfig, cache_dir: Path | None = None) -> Corpus:
    """Find (or generate), read, encode (cached by checksum) and split the corpus a config
    names."""
    task = None
    if cfg.path is None and cfg.corpus not in CORPORA:
        from study.tasks import TASKS

        if cfg.corpus not in TASKS:
            raise DataError(f"unknown corpus {cfg.corpus!r}; known corpora: "
                            f"{', '.join([*CORPORA, *TASKS])} (or set data.path)")
        task = cfg.corpus
        cfg = dataclasses.replace(cfg, path=str(generated_file(cfg, cache_dir)))
    if cfg.path is not None:
        path, name, known = Path(cfg.path), cfg.corpus, None
        if path.is_dir():
            raise DataError(f"data.path {path} is a directory, not a file; name the text "
                            "file itself")
        if not path.is_file():
            raise DataError(f"data.path {path} does not exist (relative paths are taken "
                            f"from {Path.cwd()})")
    else:
        name, known = cfg.corpus, CORPORA[cfg.corpus]
        path = locate(name)
    digest = sha256_of(path)
    if known is not None:
        check_known(name, path, digest)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{digest}-{cfg.max_chars or 'all'}.pt"
    vocab_ids = _read_cache(cache_file, digest, cfg.max_chars) if cache_file else None
    if vocab_ids is None:
        text = read_text(path)
        if cfg.max_chars is not None:
            text = text[: cfg.max_chars]
        vocab_ids = _encode(text)
        if cache_file is not None:
            vocab, ids = vocab_ids
            atomic_save({"vocab": vocab, "ids": ids, "source_sha256": digest,
                         "max_chars": cfg.max_chars, "checksum": _checksum(vocab, ids)},
                        cache_file)
    vocab, ids = vocab_ids
    splits = cfg.splits or (known.splits if known else (
        GENERATED_SPLITS if task else DEFAULT_SPLITS))
    return Corpus(name, path, digest, vocab, ids, split(ids, splits), task=task,
                  lag=cfg.lag if task else None)


def _encode(text: str) -> tuple[str, torch.Tensor]:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    uniq, ids = np.unique(codes, return_inverse=True)
    dtype = np.uint8 if len(uniq) <= 256 else np.int32
    return "".join(map(chr, uniq)), torch.from_numpy(ids.astype(dtype))


def _checksum(vocab: str, ids: torch.Tensor) -> str:
    """sha256 of the encoded text: its dtype, length, id bytes and vocabulary."""
    h = hashlib.sha256(f"{ids.dtype}:{len(ids)}:{len(vocab)}:".encode())
    h.update(ids.contiguous().numpy().tobytes())
    h.update(vocab.encode("utf-8"))
    return h.hexdigest()


def _read_cache(path: Path, digest: str, max_chars: int | None):
    """(vocab, ids) from a cache file that checks out; None (with one warning line when
    the file exists but is unreadable or does not match) to rebuild it from the text."""
    if not path.is_file():
        return None
    try:
        c = load_plain(path)
    except UnreadableFile as e:
        problem = str(e)
    except OSError as e:
        problem = f"cannot be read ({e.strerror})"
    else:
        if not isinstance(c, dict) or "checksum" not in c:
            problem = "has no checksum (an older format)"
        elif c.get("source_sha256") != digest or c.get("max_chars") != max_chars:
            problem = "was made from another text"
        elif not isinstance(c.get("vocab"), str) or not isinstance(c.get("ids"), torch.Tensor) \
                or c["ids"].dtype not in (torch.uint8, torch.int32) \
                or c["checksum"] != _checksum(c["vocab"], c["ids"]):
            problem = "does not match its checksum"
        else:
            return c["vocab"], c["ids"]
    print(f"warning: corpus cache {path} {problem}; rebuilding it from the text",
          file=sys.stderr)
    return None


def split(ids: torch.Tensor, fractions) -> dict[str, torch.Tensor]:
    n = len(ids)
    n_train, n_val = int(n * fractions[0]), int(n * fractions[1])
    return {"train": ids[:n_train], "val": ids[n_train:n_train + n_val],
            "test": ids[n_train + n_val:]}


# ---------------------------------------------------------------------------------------
# batching

def streams(ids: torch.Tensor, batch_size: int, split_name: str = "split"):
    """(inputs, targets), each (L, B) int64: B contiguous streams tiling the split."""
    L = (len(ids) - 1) // batch_size
    if L < 1:
        raise DataError(f"the {split_name} split has {len(ids)} characters, too few for "
                        f"{batch_size} streams; lower train.batch_size or use more text")
    x = ids[: batch_size * L].long().view(batch_size, L).t().contiguous()
    y = ids[1: batch_size * L + 1].long().view(batch_size, L).t().contiguous()
    return x, y


@dataclass(frozen=True)
class Window:
    """One TBPTT update: forward over [start, end), loss on [new, end), carry the state at
    step `carry` (state after the inputs [0, carry)) to the next window."""
    start: int
    carry: int
    new: int
    end: int


def windows(length: int, k1: int, k2: int) -> list[Window]:
    """The TBPTT(k1, k2) schedule over one epoch of `length` steps."""
    if not 1 <= k1 <= k2:
        raise ValueError(f"TBPTT needs 1 <= k1 <= k2, got k1={k1}, k2={k2}")
    out, new = [], 0
    while new < length:
        end = min(new + k1, length)
        start = max(0, new - (k2 - k1))
        out.append(Window(start, max(0, end - (k2 - k1)), new, end))
        new = end
    return out


def check_epoch_size(n_updates: int, split_name: str = "train") -> None:
    if n_updates < 10:
        warnings.warn(f"the {split_name} split gives only {n_updates} updates per epoch; "
                      "lower batch_size or seq_len, or use more text", stacklevel=2)
