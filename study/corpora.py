"""The corpora the harness knows by name: where each canonical file lives, its digest, its
size and Karpathy15's splits. Read by study.config (valid names) and study.data (finding,
checking and splitting the text); imports nothing of the harness.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownCorpus:
    filename: str
    url: str
    sha256: tuple[str, ...]  # digests of copies known to be right
    canonical: bool  # whether sha256 holds the canonical file's digest
    chars: int  # characters in the canonical file (Karpathy15's figure)
    splits: tuple[float, float, float]
    about: str


CORPORA: dict[str, KnownCorpus] = {
    "warpeace": KnownCorpus(
        "warpeace_input.txt",
        "https://cs.stanford.edu/people/karpathy/char-rnn/warpeace_input.txt",
        ("fb66ba999dafe24017cdd59e04c56d385a9c8466993d374fd4c6f08b2142985e",), True,
        3_258_227, (0.8, 0.1, 0.1), "War and Peace (Karpathy15's WP)"),
    # The canonical LK file could not be fetched where this harness was built, so its
    # sha256 is unknown: the digest here is the rebuild's in ../shared/data (from Debian's
    # linux-source-6.1). A download with the canonical character count is trusted on first
    # use: its sha256 is pinned next to it and checked on every later use.
    "linux": KnownCorpus(
        "linux_input.txt",
        "https://cs.stanford.edu/people/karpathy/char-rnn/linux_input.txt",
        ("709877a87c9c6149c54376c3e5f338917d8ccbef48e1f46402afba11c7a85bb8",), False,
        6_206_996, (0.9, 0.05, 0.05), "Linux kernel source (Karpathy15's LK)"),
}
DEFAULT_SPLITS = (0.9, 0.05, 0.05)
GENERATED_SPLITS = (0.8, 0.1, 0.1)  # study.tasks' long-lag corpora
