"""CharLM: characters -> L stacked recurrent layers -> linear decoder -> next-char logits.

Letters: T time, B batch, V vocabulary, H hidden units, G blocks, Hr recurrent width.

    model = CharLM(vocab_size=V, cfg=ModelConfig(...))
    logits, state, carry = model(x, state, carry_at=k)   # x (T, B) ids -> logits (T, B, V)

Weights follow a = x W + s' R + b with W (in, G·H), R (Hr, G·H) and b (G·H,), blocks in
the cell's order. With one-hot input the first layer's x W is a row lookup of W (V, G·H),
which is exactly a one-hot vector times W, without building the one-hot vectors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from study.config import ModelConfig
from study.engine.cells import Cell, get_cell_class
from study.engine.fused import kernel_for
from study.engine.scan import scan

State = list[tuple[Tensor, Tensor | None]]  # per layer: (s (B, Hr), c (B, H) or None)


class RecurrentLayer(nn.Module):
    def __init__(self, cell: Cell, input_size: int, onehot: bool = False,
                 engine: str = "auto"):
        super().__init__()
        self.cell, self.onehot, self.engine = cell, onehot, engine
        self._kernels: dict = {}
        GH = cell.G * cell.H
        self.W = nn.Parameter(torch.empty(input_size, GH))
        self.R = nn.Parameter(torch.empty(cell.state_size, GH))
        self.b = nn.Parameter(torch.empty(GH))
        self.extra = nn.ParameterDict({n: nn.Parameter(torch.empty(shape))
                                       for n, shape in cell.extra_params().items()})
        mask = cell.recurrent_mask()
        self.register_buffer("R_mask", mask, persistent=False)

    def recurrent_weights(self) -> Tensor:
        return self.R if self.R_mask is None else self.R * self.R_mask

    def __getstate__(self):
        """Pickled (a logged MLflow model) without the loaded kernels: they are handles
        into this process's shared library, rebuilt on first use after loading."""
        state = self.__dict__.copy()
        state["_kernels"] = {}
        return state

    def kernel(self, dtype: torch.dtype, device: torch.device):
        """The fused C step for this dtype and device, or None for the torch code."""
        key = (dtype, device.type, self.engine)
        if key not in self._kernels:
            self._kernels[key] = kernel_for(self.cell, dtype, device, self.engine)
        return self._kernels[key]

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor | None], keep: bool = False):
        """x: (T, B) ids when one-hot, else (T, B, in). Returns (S, C) or (S, C, K); see
        study.engine.scan.scan."""
        return scan(self.cell, x, self.W, self.b, self.recurrent_weights(), state[0],
                    state[1], tuple(self.extra.values()), onehot=self.onehot, keep=keep,
                    kernel=self.kernel(self.W.dtype, self.W.device))

    def zero_state(self, batch_size: int) -> tuple[Tensor, Tensor | None]:
        s = self.W.new_zeros(batch_size, self.cell.state_size)
        c = self.W.new_zeros(batch_size, self.cell.H) if self.cell.has_cell_state else None
        return s, c


@dataclass
class Internals:
    """What the probes read, per layer: states over time and the named gate activations."""
    h: list[Tensor]  # (T, B, H) outputs
    c: list[Tensor | None]  # (T, B, H) cell states
    gates: list[dict[str, Tensor]]  # name -> (T, B, H)


class CharLM(nn.Module):
    def __init__(self, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        cell_cls = get_cell_class(cfg.cell)
        H, L = cfg.hidden_size, cfg.num_layers
        self.embedding = None
        if cfg.input == "embedding":
            self.embedding = nn.Embedding(vocab_size, cfg.embedding_size or H)
            in_size = self.embedding.embedding_dim
        else:
            in_size = vocab_size
        layers = []
        for layer in range(L):
            cell = cell_cls(H, truncated_gradient=cfg.truncated_gradient)
            onehot = layer == 0 and self.embedding is None
            layers.append(RecurrentLayer(cell, in_size if layer == 0 else H, onehot, cfg.engine))
        self.layers = nn.ModuleList(layers)
        self.dropout = nn.Dropout(cfg.dropout)
        self.decoder = nn.Linear(H, vocab_size)
        self.reset_parameters()

    @property
    def cell(self) -> Cell:
        return self.layers[0].cell

    def reset_parameters(self) -> None:
        """Uniform in ±init_range (char-rnn), then the forget-gate bias if one is set."""
        for p in self.parameters():
            nn.init.uniform_(p, -self.cfg.init_range, self.cfg.init_range)
        if self.cfg.forget_bias != 0.0:
            if "f" not in self.cell.blocks:
                warnings.warn(f"cell {self.cfg.cell!r} has no forget-gate block; "
                              f"model.forget_bias={self.cfg.forget_bias} is not applied",
                              stacklevel=2)
            with torch.no_grad():
                for layer in self.layers:
                    layer.cell.init_bias(layer.b, self.cfg.forget_bias)

    def zero_state(self, batch_size: int) -> State:
        return [layer.zero_state(batch_size) for layer in self.layers]

    def forward(self, x: Tensor, state: State | None = None, carry_at: int | None = None):
        """x (T, B) ids -> logits (T, B, V), the final state, and the state after the first
        `carry_at` steps (detached: what truncated BPTT carries to the next window)."""
        T, B = x.shape
        state = state or self.zero_state(B)
        inp = x if self.embedding is None else self.embedding(x)
        final, carry = [], []
        for layer, st in zip(self.layers, state, strict=True):
            S, C = layer(inp, st)
            has_c = layer.cell.has_cell_state
            final.append((S[-1], C[-1] if has_c else None))
            if carry_at is not None:
                carry.append((S[carry_at].detach(), C[carry_at].detach() if has_c else None))
            inp = self.dropout(S[1:, :, :layer.cell.H])  # (T, B, H)
        logits = self.decoder(inp)
        return logits, final, (carry if carry_at is not None else None)

    @torch.no_grad()
    def internals(self, x: Tensor, state: State | None = None) -> tuple[Internals, State]:
        """Every layer's outputs, cell states and gate activations over x (T, B)."""
        T, B = x.shape
        state = state or self.zero_state(B)
        inp = x if self.embedding is None else self.embedding(x)
        out = Internals([], [], [])
        final = []
        for layer, st in zip(self.layers, state, strict=True):
            S, C, K = layer(inp, st, keep=True)
            H, has_c = layer.cell.H, layer.cell.has_cell_state
            out.h.append(S[1:, :, :H])
            out.c.append(C[1:] if has_c else None)
            out.gates.append(layer.cell.gate_values(K, S[1:]))
            final.append((S[-1], C[-1] if has_c else None))
            inp = S[1:, :, :H]
        return out, final

    def num_params(self) -> int:
        """Free parameters (entries of R fixed at zero by a cell's mask not counted)."""
        n = sum(p.numel() for p in self.parameters())
        for layer in self.layers:
            if layer.R_mask is not None:
                n -= int((layer.R_mask == 0).sum())
        return n


def count_params(cfg: ModelConfig, vocab_size: int, hidden_size: int | None = None) -> int:
    """CharLM(vocab_size, cfg).num_params() without building it (optionally at another
    width): to match sizes across cells."""
    H = hidden_size or cfg.hidden_size
    cell = get_cell_class(cfg.cell)(H)
    GH = cell.G * H
    mask = cell.recurrent_mask()
    rec = GH * cell.state_size if mask is None else int(mask.sum())
    extra = sum(torch.Size(shape).numel() for shape in cell.extra_params().values())
    n, n_in = 0, vocab_size
    if cfg.input == "embedding":
        n_in = cfg.embedding_size or H
        n += vocab_size * n_in
    for _ in range(cfg.num_layers):
        n += n_in * GH + rec + GH + extra
        n_in = H
    return n + H * vocab_size + vocab_size


def matched_width(cfg: ModelConfig, vocab_size: int, reference_cell: str) -> int:
    """The width at which cfg.cell has the parameter count closest to `reference_cell` at
    cfg.hidden_size (Karpathy15 sizes each row of its Table 1 this way)."""
    from dataclasses import replace

    target = count_params(replace(cfg, cell=reference_cell), vocab_size)
    best = min(range(1, 4 * cfg.hidden_size + 1),
               key=lambda h: abs(count_params(cfg, vocab_size, h) - target))
    return best


def detach_state(state: State) -> State:
    return [(s.detach(), None if c is None else c.detach()) for s, c in state]


@torch.no_grad()
def sample(model: CharLM, prime: Tensor, length: int, temperature: float = 1.0,
           generator: torch.Generator | None = None) -> list[int]:
    """Generate `length` token ids after priming with `prime` (1-D ids)."""
    was_training = model.training
    model.eval()
    logits, state, _ = model(prime.view(-1, 1))
    out = []
    for _ in range(length):
        probs = torch.softmax(logits[-1, 0].float().cpu() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator)
        out.append(int(nxt))
        logits, state, _ = model(nxt.view(1, 1).to(prime.device), state)
    model.train(was_training)
    return out
