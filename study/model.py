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

from study.config_schema import ModelConfig
from study.engine import paths
from study.engine.cells import Cell, get_cell_class
from study.engine.fused import kernel_for
from study.engine.scan import recording_state_grads, scan

State = list[tuple[Tensor, Tensor | None]]  # per layer: (s (B, Hr), c (B, H) or None)


class RecurrentLayer(nn.Module):
    def __init__(self, cell: Cell, input_size: int, onehot: bool = False,
                 engine: str = "auto"):
        super().__init__()
        self.cell, self.onehot, self.engine = cell, onehot, engine
        self._kernels: dict = {}
        self._paths: dict = {}  # device type -> TrainingPath, when none was set
        self.path: paths.TrainingPath | None = None  # set by study.train.build_model
        self._graphs: dict = {}  # CUDA graphs of the scan loops (study.engine.graphs)
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
        state["_kernels"], state["_graphs"] = {}, {}
        return state

    def __setstate__(self, state):
        state.setdefault("_paths", {})  # pickled before training paths existed
        state.setdefault("path", None)
        state.setdefault("_graphs", {})
        self.__dict__.update(state)

    def training_path(self, device: torch.device) -> paths.TrainingPath:
        """How this layer trains on `device`: the path the run set (study.train), else the
        one `model.engine` picks there (study.engine.paths)."""
        if self.path is not None:
            return self.path
        if device.type not in self._paths:
            path = paths.choose(type(self.cell), self.engine, device.type,
                                truncated_gradient=self.cell.truncated_gradient)
            paths.say_why(type(self.cell), path)
            self._paths[device.type] = path
        return self._paths[device.type]

    def kernel(self, dtype: torch.dtype, device: torch.device):
        """The engine's step code for this dtype and device: a fused C or Triton kernel
        object, or None for the cell's torch step. A layer that trains through cuDNN runs
        the fastest engine there is when the probes ask for its internals."""
        kind = self.training_path(device).kind
        key = (dtype, device.type, kind)
        if key not in self._kernels:
            self._kernels[key] = _engine_kernel(self.cell, kind, dtype, device)
        return self._kernels[key]

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor | None], keep: bool = False):
        """x: (T, B) ids when one-hot, else (T, B, in). Returns (S, C) or (S, C, K); see
        study.engine.scan.scan. Always the engine (the probes read this)."""
        device = self.W.device
        dtype = _compute_dtype(self.W)
        path = self.training_path(device)
        return scan(self.cell, x, self.W, self.b, self.recurrent_weights(), state[0],
                    state[1], tuple(self.extra.values()), onehot=self.onehot, keep=keep,
                    kernel=self.kernel(dtype, device),
                    graphs=self._graphs if path.graphs else None)

    def sequence(self, x: Tensor, state: tuple[Tensor, Tensor | None],
                 carry_at: int | None = None):
        """Run the layer over x on its training path: (outputs (T, B, H), the final state,
        and the state after `carry_at` steps or None)."""
        path = self.training_path(self.W.device)
        if path.kind == "cudnn" and not recording_state_grads():
            return self._sequence_cudnn(x, state, carry_at)
        S, C = self(x, state)
        has_c = self.cell.has_cell_state
        final = (S[-1], C[-1] if has_c else None)
        carry = None if carry_at is None else (S[carry_at], C[carry_at] if has_c else None)
        return S[1:, :, :self.cell.H], final, carry

    def torch_weights(self) -> list[Tensor]:
        """This layer's parameters in nn.LSTM's / nn.GRU's layout and block order:
        [weight_ih (G·H, in), weight_hh (G·H, H), bias_ih, bias_hh]. Differentiable: the
        gradients flow back to W, R, b (and GRU's b_Rn)."""
        cell, H = self.cell, self.cell.H
        order = [cell.blocks.index(n) for n in cell.torch_blocks]

        def theirs(t):  # (..., G·H) in our block order -> (G·H, ...) in theirs
            blocks = t.unflatten(-1, (cell.G, H))
            return blocks[..., order, :].flatten(-2).transpose(0, -1) if t.dim() > 1 \
                else blocks[order].flatten()

        w_ih, w_hh, b_ih = theirs(self.W), theirs(self.R), theirs(self.b)
        if cell.split_recurrent:  # GRU: b_Rn stays inside r ⊙ (R_n h' + b_Rn)
            b_hh = torch.cat([self.b.new_zeros(2 * H), self.extra["b_Rn"]])
        else:
            b_hh = self.b.new_zeros(cell.G * H)
        return [w_ih, w_hh, b_ih, b_hh]

    def _sequence_cudnn(self, x, state, carry_at):
        """`sequence` through PyTorch's own kernels; the state after `carry_at` steps comes
        from running the window in two pieces (they return only their last state)."""
        if self.onehot:  # nn.LSTM multiplies by W_ih: the one-hot rows select W's rows
            x = torch.nn.functional.one_hot(x, self.W.shape[0]).to(self.W.dtype)
        weights = self.torch_weights()
        lstm = self.cell.has_cell_state
        s, c = state
        carry = (s, c) if carry_at == 0 else None
        split = carry_at is not None and 0 < carry_at < x.shape[0]
        out = []
        for piece in ([x[:carry_at], x[carry_at:]] if split else [x]):
            with warnings.catch_warnings():  # cuDNN compacts the rearranged weights itself
                warnings.filterwarnings("ignore", message="RNN module weights are not part")
                y, s, c = _torch_rnn(lstm, piece, s, c, weights, self.training)
            out.append(y)
            if carry is None and carry_at:
                carry = (s, c)
        return (out[0] if len(out) == 1 else torch.cat(out)), (s, c), carry

    def zero_state(self, batch_size: int) -> tuple[Tensor, Tensor | None]:
        s = self.W.new_zeros(batch_size, self.cell.state_size)
        c = self.W.new_zeros(batch_size, self.cell.H) if self.cell.has_cell_state else None
        return s, c


def _torch_rnn(lstm: bool, x, s, c, weights, training):
    """One layer of PyTorch's own LSTM or GRU (cuDNN on CUDA) from (s, c): (y, s, c)."""
    if lstm:
        y, s, c = torch._VF.lstm(x, (s[None], c[None]), weights, True, 1, 0.0, training,
                                 False, False)
        return y, s[0], c[0]
    y, s = torch._VF.gru(x, s[None], weights, True, 1, 0.0, training, False, False)
    return y, s[0], None


def _compute_dtype(W: Tensor) -> torch.dtype:
    """The dtype the engine computes in: W's, or autocast's (train.precision: bf16)."""
    kind = W.device.type
    if W.dtype == torch.float32 and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return W.dtype


def _engine_kernel(cell: Cell, kind: str, dtype: torch.dtype, device: torch.device):
    """The step object of path `kind`, or None for the torch step. A layer that trains
    through cuDNN (lstm, gru: both covered) runs the probes on the fastest engine there."""
    from study.engine import triton_step

    if kind == "cudnn":
        kind = "fused" if device.type != "cuda" else (
            "triton" if triton_step.available(device)[0] else "torch")
    if kind == "triton":
        try:
            return triton_step.triton_kernel_for(cell, dtype, device)
        except ValueError:  # a dtype the kernels do not cover (fp16): the torch step
            return None
    return kernel_for(cell, dtype, device) if kind == "fused" else None


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
            out, fin, car = layer.sequence(inp, st, carry_at)
            final.append(fin)
            if carry_at is not None:
                carry.append((car[0].detach(), None if car[1] is None else car[1].detach()))
            inp = self.dropout(out)  # (T, B, H)
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
