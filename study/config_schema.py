"""The configuration's schema: every section and key with its default (Karpathy15's
char-rnn setup), its help text and its allowed values or range. Loaded and checked by
study.config; `python -m study.config` lists it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key, the file and the fix."""


def opt(default: Any, doc: str, *, choices: tuple | None = None, lo: float | None = None,
        hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """A config field with its help text and its allowed values or range."""
    meta = {"doc": doc, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open,
            "hi_open": hi_open}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    corpus: str = opt("warpeace", "a known corpus (warpeace, linux), a generated long-lag task "
                      "(adding, temporal_order, embedded_reber: study.tasks); with `path`, a "
                      "label for the file")
    path: str | None = opt(None, "any UTF-8 text file to use instead of a known corpus")
    splits: list[float] | None = opt(
        None, "train/val/test fractions; default per corpus (WP 0.8/0.1/0.1, LK 0.9/0.05/0.05)")
    max_chars: int | None = opt(
        None, "use only the first N characters of the file (quick runs); for a generated "
        "task, its size (default 200,000)", lo=1000)
    lag: int = opt(50, "generated long-lag tasks (adding, temporal_order, embedded_reber): "
                   "characters between the information and the target that needs it", lo=1)
    seed: int = opt(0, "generated long-lag tasks: the seed of the text (fixed across "
                    "training seeds)", lo=0)


@dataclass(frozen=True)
class ModelConfig:
    cell: str = opt("lstm", "the cell variant (see study.engine.cells.CELLS)")
    hidden_size: int = opt(128, "units per layer (H)", lo=1, hi=16384)
    num_layers: int = opt(2, "stacked recurrent layers (L)", lo=1, hi=16)
    input: str = opt("onehot", "how characters enter layer 1", choices=("onehot", "embedding"))
    embedding_size: int | None = opt(None, "embedding width when input=embedding (default H)",
                                     lo=1)
    dropout: float = opt(0.0, "dropout on every layer's output", lo=0.0, hi=1.0, hi_open=True)
    init_range: float = opt(0.08, "weights uniform in ±init_range (char-rnn)", lo=0.0,
                            lo_open=True)
    forget_bias: float = opt(0.0, "initial forget-gate bias (Jozefowicz15 suggest 1)")
    truncated_gradient: bool = opt(
        False, "Hochreiter97's truncated gradient (cells that support it: lstm1997)")
    engine: str = opt("auto", "the code that trains the layers (study.engine.paths): auto "
                      "picks cuDNN for lstm and gru on CUDA, else the Triton kernels there, "
                      "and the fused C kernels on the CPU; or one of fused (C, CPU), triton "
                      "(GPU), cudnn (lstm and gru only) and torch (each cell's torch step)",
                      choices=("auto", "fused", "torch", "triton", "cudnn"))


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = opt("rmsprop", "optimizer: rmsprop (char-rnn), adam, or plain sgd (with "
                         "`momentum`; Pascanu13's setting, where clipping matters)",
                         choices=("rmsprop", "adam", "sgd"))
    lr: float = opt(2e-3, "learning rate", lo=0.0, lo_open=True)
    momentum: float = opt(0.0, "sgd: heavy-ball momentum (0: plain SGD)", lo=0.0, hi=1.0,
                          hi_open=True)
    rmsprop_alpha: float = opt(0.95, "RMSProp decay (char-rnn: 0.95)", lo=0.0, hi=1.0,
                               lo_open=True, hi_open=True)
    lr_decay: float = opt(0.95, "multiply the learning rate by this every epoch after "
                          "`lr_decay_after`", lo=0.0, hi=1.0, lo_open=True)
    lr_decay_after: int = opt(10, "first epoch after which the learning rate decays", lo=0)
    batch_size: int = opt(100, "parallel streams (B)", lo=1)
    seq_len: int = opt(100, "TBPTT k2: steps back-propagated per update", lo=1)
    k1: int | None = opt(None, "TBPTT k1: new steps per update (default seq_len; <= seq_len)",
                         lo=1)
    time_reduction: str = opt(
        "mean", "loss over the k1 new steps: mean, or sum (char-rnn sums gradients over time)",
        choices=("mean", "sum"))
    epochs: int = opt(50, "maximum number of passes over the training split", lo=1)
    patience: int | None = opt(5, "early stopping: epochs without a better val loss (null: "
                               "off)", lo=1)
    clip: str = opt("value", "gradient clipping: none, norm (Pascanu13: the whole gradient "
                    "rescaled to norm <= θ), value (char-rnn: each parameter gradient "
                    "component to [-θ, θ]) or preact (Graves13: dL/d(pre-activation) of every "
                    "gate to [-θ, θ] at every step, inside back-propagation)",
                    choices=("none", "norm", "value", "preact"))
    clip_value: float = opt(5.0, "the clipping threshold θ", lo=0.0, lo_open=True)
    divergence_factor: float = opt(3.0, "stop when the loss exceeds this times the initial",
                                   lo=1.0, lo_open=True)
    eval_seq_len: int = opt(500, "chunk length when evaluating (no gradients)", lo=1)
    sample_chars: int = opt(300, "length of the text sample logged every epoch", lo=0)
    keep_checkpoints: str = opt(
        "best", "checkpoints kept and logged: the best epoch's (best), or also the weights "
        "at initialisation, after updates 1, 2, 4, ... of the first epoch and after every "
        "epoch (all: checkpoint/snapshots/update_N.pt, what study.errors' training dynamics "
        "read)", choices=("best", "all"))
    seed: int = opt(0, "seed for torch, numpy and random", lo=0)
    device: str = opt("auto", "auto picks CUDA when present", choices=("auto", "cpu", "cuda"))
    precision: str = opt("fp32", "fp32 (on CUDA with TF32 matmuls), or bf16: the forward "
                         "under bfloat16 autocast, the loss, weights and optimizer state in "
                         "fp32 (CUDA only)", choices=("fp32", "bf16"))
    cuda_graphs: str = opt("auto", "on CUDA, replay the engine's T-step loops as CUDA graphs "
                           "(auto), or launch every step from Python (off)",
                           choices=("auto", "off"))
    threads: int | None = opt(None, "torch intra-op threads (default: torch's choice)", lo=1)
    flush_denormal: bool = opt(True, "flush denormal floats to zero (x86 FTZ/DAZ): values "
                               "below 1.2e-38 become 0 instead of slowing arithmetic ~100x")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = opt(True, "log to MLflow")
    uri: str | None = opt(None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                          "sqlite:///<results_dir>/mlflow.db)")
    experiment: str = opt("study", "MLflow experiment name")
    results_dir: str = opt("results", "where the store, artifacts, checkpoints and caches go")
    log_checkpoint: bool = opt(True, "log the best checkpoint as an MLflow artifact and as a "
                               "logged MLflow model (PyTorch flavour)")
    system_metrics_s: float = opt(10.0, "sample MLflow's system metrics (CPU, memory, GPU) "
                                  "every this many seconds while training (0: off)", lo=0.0)


@dataclass(frozen=True)
class ProbesConfig:
    enabled: bool = opt(True, "analyse every run after training (saturation, units, error flow)")
    every: int = opt(0, "also log saturation and unit scores every N epochs (0: at the end only)",
                     lo=0)
    chars: int = opt(100_000, "characters of the validation split the probes read", lo=1000)
    streams: int = opt(20, "parallel streams the stretch is read in", lo=1)
    warmup: int = opt(50, "steps at each stream's start left out of the statistics", lo=0)
    left: float = opt(0.1, "a gate is left-saturated below this", lo=0.0, hi=1.0)
    right: float = opt(0.9, "a gate is right-saturated above this", lo=0.0, hi=1.0)
    gru_update: str = opt(
        "pytorch", "GRU update gate shown as u (PyTorch: h = (1-u) n + u h') or as char-rnn's "
        "1 - u", choices=("pytorch", "charrnn"))
    concepts: list[str] = opt([], "concepts to score (empty: all of study.probes.concepts)")
    top_units: int = opt(3, "units per concept drawn as traces", lo=1)
    trace_chars: int = opt(1500, "characters in each HTML trace (PNG: the first 600)", lo=50)
    error_flow: bool = opt(True, "measure ‖dℓ_t/dh_(t-q)‖ and ‖dℓ_t/dc_(t-q)‖ against q")
    error_flow_q: int = opt(200, "largest distance q", lo=1)
    error_flow_batch: int = opt(32, "sequences the error flow is averaged over", lo=1)
    errors: bool = opt(False, "after training, break the model's test errors down as "
                       "Karpathy15 do (study.errors: n-gram, dynamic memory, rare word, word "
                       "start, punctuation, boost) and, on code, score closing braces "
                       "against the 20-gram")
    errors_p: float = opt(0.5, "errors: a test character is an error when the model gives it "
                          "a probability below this", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    errors_ngram_order: int = opt(9, "errors: n-gram models of orders 1..this explain an error "
                                  "when one of them gives the character p >= errors_p", lo=1,
                                  hi=20)
    errors_memory_chars: int = opt(8, "errors: dynamic memory needs the character and this many "
                                   "before it to have occurred earlier", lo=1)
    errors_memory_window: int = opt(1000, "errors: ... within this many characters before",
                                    lo=1)
    errors_rare_count: int = opt(5, "errors: a rare word occurs at most this often in the "
                                 "train split", lo=0)
    dynamics_chars: int = opt(10_000, "errors, with train.keep_checkpoints=all: characters of "
                              "the validation split on which each snapshot's predictions "
                              "are compared with the n-grams'", lo=100)


@dataclass(frozen=True)
class SweepConfig:
    enabled: bool = opt(False, "run an Optuna study over TBPTT and clipping instead of the "
                        "ablation grid (one variant and corpus: model.cell, data.corpus)")
    name: str | None = opt(None, "the study's name (default: the config's name); re-running "
                           "the same command resumes it")
    trials: int = opt(20, "finished trials wanted (grid: at most the grid's size)", lo=1)
    sampler: str = opt("tpe", "grid (the heatmap), tpe or random",
                       choices=("grid", "tpe", "random"))
    seed: int = opt(0, "sampler seed (worker w uses seed + w)", lo=0)
    pruner: str = opt("median", "stop bad trials early on their per-epoch validation loss",
                      choices=("none", "median", "hyperband"))
    pruner_startup_trials: int = opt(3, "median: finished trials before pruning starts", lo=0)
    pruner_warmup_epochs: int = opt(1, "epochs before a trial can be pruned", lo=0)
    storage: str | None = opt(None, "Optuna storage URL (default: a journal file under "
                              "<results>/optuna/; postgresql://... for several machines)")
    workers: int = opt(1, "local worker processes (the --workers flag overrides)", lo=1)
    k2_min: int = opt(10, "smallest k2 (steps back-propagated)", lo=1)
    k2_max: int = opt(250, "largest k2 (log scale)", lo=1)
    k1_fractions: list[float] = opt([1.0, 0.5, 0.25], "k1 as a fraction of k2 (1.0: k1 = k2, "
                                    "the paper's setting)")
    k1: int | None = opt(None, "hold k1 (new characters per update) fixed at this value and "
                         "vary only k2: every trial takes the same updates over the same "
                         "characters, and only the gradient's reach differs (replaces the k1 "
                         "fractions)", lo=1)
    clip_modes: list[str] = opt(["none", "norm", "value"], "clipping schemes to try (none, "
                                "norm, value, preact)")
    clip_min: float = opt(0.1, "smallest clipping threshold (log scale)", lo=0.0, lo_open=True)
    clip_max: float = opt(10.0, "largest clipping threshold", lo=0.0, lo_open=True)
    lr_min: float | None = opt(None, "also search the learning rate from lr_min ...",
                               lo=0.0, lo_open=True)
    lr_max: float | None = opt(None, "... to lr_max (log scale)", lo=0.0, lo_open=True)
    grid_k2: list[int] = opt([25, 50, 100, 200], "grid sampler: k2 values")
    grid_k1_fraction: list[float] = opt([1.0], "grid sampler: k1 fractions")
    grid_clip: list[str] = opt(["none", "norm:1", "norm:5", "value:1", "value:5"],
                               "grid sampler: none, or mode:threshold (mode norm, value or "
                               "preact)")
    grid_lr: list[float] = opt([], "grid sampler: learning rates (empty: train.lr)")
    diverged_value: float | None = opt(
        None, "objective of a trial that diverged (default: ln V nats/char, the uniform "
        "prediction's loss); a diverged trial is a result, not a failure")
    keep_checkpoints: bool = opt(True, "each trial logs its best checkpoint and model, so "
                                 "that the best trial can be inspected")


@dataclass(frozen=True)
class NgramConfig:
    max_order: int = opt(20, "n-gram baselines (python -m study.ngram): orders 1..max_order, "
                         "Karpathy15's up to 20", lo=1, hi=20)
    smoothing: str = opt("mkn", "interpolated Kneser-Ney: mkn (modified, three discounts per "
                         "order) or kn (one discount)", choices=("mkn", "kn"))


@dataclass(frozen=True)
class AblationConfig:
    variants: list[str] = opt([], "cells to train (empty: model.cell)")
    datasets: list[str] = opt([], "corpora to train on (empty: data.corpus)")
    seeds: list[int] = opt([], "seeds (empty: train.seed)")
    grid: dict[str, list] = opt({}, "more axes: a dotted key and its values, e.g. "
                                "{model.num_layers: [1, 2, 3]}")
    match_params_to: str | None = opt(
        None, "give each variant the width whose parameter count is closest to this cell's "
        "at model.hidden_size (Karpathy15's equal-size rows)")
    storage: str | None = opt(
        None, "Optuna storage URL of the grid's work queue (default: a journal file under "
        "<results>/optuna/; postgresql://... to share one grid between machines)")


@dataclass(frozen=True)
class Config:
    name: str = opt("study", "a name for this config (the parent run's name)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    ngram: NgramConfig = field(default_factory=NgramConfig)
