"""The GPU training paths without a GPU: which path trains a run (the selection, with the
device given as a string), the cuDNN path's numbers (PyTorch's own LSTM/GRU kernels run on
the CPU too), the CUDA-graph mechanics (study.engine.graphs' EagerGraph keeps a graph's
contract on the CPU), bf16 autocast through the engine, and what a run logs about its path.
The test marked `cuda` compares a training step on CUDA against the CPU and runs only where
a GPU is."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from study import data
from study.config import Config, ModelConfig, TrainConfig, run_hash
from study.config_schema import ConfigError
from study.engine import graphs
from study.engine.cells import CELLS, LSTMFamily, get_cell_class
from study.engine.paths import ENGINES, PathError, TrainingPath, choose
from study.model import CharLM
from study.train import build_model, path_params, train_step

NO_TRITON = (False, "triton is not installed: pip install triton")
TRITON = (True, "")


def pick(name, engine="auto", device="cuda", **kw):
    kw.setdefault("triton", TRITON)
    kw.setdefault("fused", True)
    return choose(get_cell_class(name), engine, device, **kw)


# ---------------------------------------------------------------------------------------
# selection


def test_auto_on_cuda_trains_lstm_and_gru_through_cudnn_and_the_rest_on_triton_graphs():
    for name in CELLS:
        path = pick(name)
        if name in ("lstm", "gru"):
            assert path == TrainingPath("cudnn")
        else:
            assert (path.kind, path.graphs) == ("triton", True), name
            assert "not nn.LSTM's or nn.GRU's cell" in path.why


def test_auto_on_cuda_keeps_the_engine_where_cudnn_cannot_do_what_the_run_asks():
    path = pick("lstm", clip="preact")
    assert (path.kind, path.graphs) == ("triton", False)  # clipping counts: no graphs
    assert "preact" in path.why
    assert pick("lstm1997", truncated_gradient=True).kind == "triton"
    assert pick("gru", cuda_graphs="off") == TrainingPath("cudnn")
    assert pick("peephole", cuda_graphs="off").graphs is False


def test_auto_on_cuda_without_triton_runs_the_torch_step_and_says_why():
    path = pick("peephole", triton=NO_TRITON)
    assert (path.kind, path.graphs) == ("torch", True)
    assert "pip install triton" in path.why
    assert pick("lstm", triton=NO_TRITON).kind == "cudnn"


def test_auto_on_the_cpu_is_the_c_kernels_or_the_torch_step():
    for name in CELLS:
        assert pick(name, device="cpu") == TrainingPath("fused"), name
    path = pick("lstm", device="cpu", fused=False)
    assert (path.kind, path.graphs, path.why) == ("torch", False, "the C kernels did not build")
    assert pick("lstm", engine="cudnn", device="cpu").kind == "cudnn"


def test_explicit_engines_that_cannot_train_the_run_are_refused_with_the_fix():
    cases = [
        (dict(name="peephole", engine="cudnn"), "not nn.LSTM's or nn.GRU's cell"),
        (dict(name="lstm", engine="cudnn", clip="preact"), "needs the engine's backward"),
        (dict(name="lstm", engine="fused"), "runs on the CPU; on CUDA use 'triton'"),
        (dict(name="lstm", engine="triton", triton=NO_TRITON), "pip install triton"),
        (dict(name="lstm", engine="warp"), "valid engines: auto, fused, torch, triton, cudnn"),
        (dict(name="lstm", cuda_graphs="on"), "valid: auto, off"),
    ]
    for kw, message in cases:
        with pytest.raises(PathError, match=message):
            pick(**kw)


def test_the_config_schema_offers_exactly_the_engines_the_selection_knows():
    field = next(f for f in dataclasses.fields(ModelConfig) if f.name == "engine")
    assert tuple(field.metadata["choices"]) == ENGINES


def test_config_checks_refuse_what_no_machine_could_train(tmp_path):
    from study import config as config_mod

    def load(*sets):
        p = tmp_path / "c.yaml"
        p.write_text("name: t\n")
        return config_mod.load(str(p), list(sets))

    with pytest.raises(ConfigError, match="model.engine = 'cudnn': Peephole is not"):
        load("model.cell=peephole", "model.engine=cudnn")
    with pytest.raises(ConfigError, match="'bf16' is for CUDA"):
        load("train.precision=bf16", "train.device=cpu")
    assert load("model.cell=gru", "model.engine=cudnn").model.engine == "cudnn"
    # refused only where no machine the config allows could train it: with device auto,
    # bf16 (CUDA) and the C kernels (CPU) are each possible somewhere
    assert load("train.precision=bf16").train.precision == "bf16"
    assert load("model.engine=fused").model.engine == "fused"
    with pytest.raises(ConfigError, match="'fused' runs on the CPU"):
        load("model.engine=fused", "train.device=cuda")


def test_a_run_identity_ignores_how_fast_it_ran_and_keys_left_at_their_default():
    base = Config()
    assert run_hash(base) == run_hash(dataclasses.replace(
        base, train=dataclasses.replace(base.train, cuda_graphs="off")))
    assert run_hash(base) == run_hash(dataclasses.replace(
        base, model=dataclasses.replace(base.model, engine="cudnn")))
    bf16 = dataclasses.replace(base, train=dataclasses.replace(base.train, precision="bf16"))
    assert run_hash(bf16) != run_hash(base)  # a different arithmetic is a different run


# ---------------------------------------------------------------------------------------
# the cuDNN path's numbers (PyTorch's own kernels, here on the CPU)

V, H, T, B = 11, 9, 7, 3


def pair(cell, layers=2, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = ModelConfig(cell=cell, hidden_size=H, num_layers=layers)
    ours = CharLM(V, cfg).to(dtype)
    theirs = copy.deepcopy(ours)
    for layer in theirs.layers:
        layer.path = TrainingPath("cudnn")
    for layer in ours.layers:
        layer.path = TrainingPath("fused")
    return ours, theirs


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("carry_at", [None, 0, 4, T])
def test_the_cudnn_path_equals_the_engine_forward_carry_and_gradients(cell, carry_at):
    ours, theirs = pair(cell)
    x = torch.randint(0, V, (T, B))
    state = [(torch.randn(B, H, dtype=torch.float64),
              torch.randn(B, H, dtype=torch.float64) if cell == "lstm" else None)
             for _ in range(2)]
    outs = []
    for model in (ours, theirs):
        logits, final, carry = model(x, state, carry_at=carry_at)
        loss = logits.square().mean() + sum(s.sum() + (0 if c is None else c.sum())
                                            for s, c in final)
        loss.backward()
        outs.append((logits, final, carry, {n: p.grad for n, p in model.named_parameters()}))
    (l1, f1, c1, g1), (l2, f2, c2, g2) = outs
    torch.testing.assert_close(l1, l2, rtol=1e-10, atol=1e-12)
    for a, b in zip(f1 + (c1 or []), f2 + (c2 or []), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-9, atol=1e-12, msg=name)


def test_the_cudnn_path_leaves_the_probes_on_the_engine():
    """internals() (gates, cell states) and the error-flow recorder run the engine."""
    from study.engine.scan import record_state_grads

    ours, theirs = pair("lstm")
    x = torch.randint(0, V, (T, B))
    a, _ = ours.internals(x)
    b, _ = theirs.internals(x)
    torch.testing.assert_close(a.gates[1]["f"], b.gates[1]["f"])
    with record_state_grads() as rec:
        logits, _, _ = theirs(x)
        logits.sum().backward()
    assert len(rec.h) == 2 and len(rec.h[0]) == T  # the engine's backward recorded it


# ---------------------------------------------------------------------------------------
# CUDA-graph mechanics, on the CPU


@pytest.fixture
def eager_graphs(monkeypatch):
    monkeypatch.setattr(graphs, "backend", graphs.EagerGraph)


def small_run(cell, **train):
    return Config(model=ModelConfig(cell=cell, hidden_size=H, num_layers=2),
                  train=TrainConfig(batch_size=B, seq_len=6, k1=4, device="cpu",
                                    clip="value", **train))


@pytest.mark.parametrize("cell", ["peephole", "gru", "rnn", "fgr"])
def test_training_with_graphed_loops_equals_training_without(cell, eager_graphs):
    """Three TBPTT updates (the carried state crosses windows that overlap: k1 < k2), the
    loops replayed from captured buffers against the plain engine: the same losses and
    weights. Catches a replay that reads stale inputs or hands out memory it reuses."""
    cfg = small_run(cell)
    ids = torch.randint(0, V, (400,))
    x, y = data.streams(ids, B, "train")
    schedule = data.windows(x.shape[0], 4, 6)[:4]
    results = []
    for use_graphs in (False, True):
        torch.manual_seed(0)
        model = CharLM(V, cfg.model).double()
        for layer in model.layers:
            layer.path = TrainingPath("fused", graphs=use_graphs)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        state, losses = None, []
        for w in schedule:
            loss, _, _, state = train_step(model, opt, x, y, state, w, cfg)
            losses.append(loss)
        made = [g for layer in model.layers for g in layer._graphs.values()]
        results.append((losses, [p.detach().clone() for p in model.parameters()], made))
    (l1, p1, none), (l2, p2, made) = results
    assert not none and made  # graphs were captured, and replayed
    assert all(g.graph.replays >= 1 for g in made)
    assert l1 == pytest.approx(l2, rel=1e-12)
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_graphs_stay_off_where_per_step_values_are_read(eager_graphs):
    """Pre-activation clipping counts per step and the probes keep K: no capture."""
    from study.engine.scan import clip_preactivations, single_backward

    torch.manual_seed(0)
    model = CharLM(V, ModelConfig(cell="lstm", hidden_size=H, num_layers=1)).double()
    model.layers[0].path = TrainingPath("fused", graphs=True)
    x = torch.randint(0, V, (T, B))
    with single_backward(), clip_preactivations(0.01):
        model(x)[0].sum().backward()
    model.internals(x)
    assert model.layers[0]._graphs == {}
    with single_backward():
        model(x)[0].sum().backward()
    assert model.layers[0]._graphs != {}


def test_a_graph_refuses_an_input_that_changes_between_none_and_a_tensor(eager_graphs):
    g = graphs.Graphed(lambda a, b: (a * 2,), [torch.ones(2), None])
    with pytest.raises(RuntimeError, match="captured with an input of None"):
        g(torch.ones(2), torch.ones(2))


# ---------------------------------------------------------------------------------------
# bf16 autocast through the engine (CPU autocast stands in for CUDA's)


@pytest.mark.parametrize("cell", ["peephole", "gru"])
def test_bf16_autocast_runs_the_engine_in_bf16_with_fp32_gradients(cell):
    torch.manual_seed(0)
    model = CharLM(V, ModelConfig(cell=cell, hidden_size=H, num_layers=2))
    x = torch.randint(0, V, (T, B))
    ref, _, _ = model(x)
    ref.float().sum().backward()
    g_ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, final, _ = model(x)
    assert final[0][0].dtype == torch.bfloat16  # the recurrence ran in bf16
    logits.float().sum().backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in model.parameters())
    torch.testing.assert_close(logits.float(), ref, rtol=0, atol=5e-2)
    for a, b in zip(g_ref, (p.grad for p in model.parameters()), strict=True):
        assert (a - b).norm() <= 0.05 * a.norm() + 1e-3


# ---------------------------------------------------------------------------------------
# what a run logs about its path


def test_build_model_sets_the_path_and_the_run_says_what_trained_it():
    cfg = small_run("peephole")
    model = build_model(cfg, V, torch.device("cpu"))
    assert all(layer.path == TrainingPath("fused") for layer in model.layers)
    assert path_params(cfg, model, torch.device("cpu")) == {
        "trained_with": "engine (fused C kernels)", "precision_used": "fp32"}
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, cell="gru",
                                                             engine="cudnn"))
    model = build_model(cfg, V, torch.device("cpu"))
    assert path_params(cfg, model, torch.device("cpu"))["trained_with"] == \
        "cuDNN (nn.LSTM/nn.GRU kernels; probes on the engine)"
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="bf16"))
    with pytest.raises(PathError, match="'bf16' is for CUDA .* trains on cpu; use 'fp32'"):
        build_model(cfg, V, torch.device("cpu"))


def test_a_cell_of_its_own_trains_on_the_torch_step_on_any_device():
    class Mine(LSTMFamily):
        def step(self, *args):
            return super().step(*args)

    assert choose(Mine, "auto", "cuda", triton=TRITON).kind == "torch"
    assert choose(Mine, "auto", "cpu", fused=True).kind == "torch"


# ---------------------------------------------------------------------------------------
# on a CUDA machine


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", ["lstm", "peephole", "gru", "rnn", "fgr", "binary"])
def test_one_training_step_on_cuda_equals_the_cpu(cell):
    """The whole model, one TBPTT update on CUDA (its auto path: cuDNN, or Triton kernels
    with CUDA graphs) against the CPU's, to 1e-4; TF32 off so that fp32 is fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = small_run(cell)
    ids = torch.randint(0, V, (400,))
    x, y = data.streams(ids, B, "train")
    w = data.windows(x.shape[0], 4, 6)[0]
    out = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = CharLM(V, cfg.model)
        path = choose(type(model.cell), "auto", device)
        model = model.to(device)
        for layer in model.layers:
            layer.path = path
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        loss, _, _, _ = train_step(model, opt, x.to(device), y.to(device), None, w, cfg)
        out[device] = (loss, [p.detach().cpu() for p in model.parameters()])
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], abs=1e-4)
    for a, b in zip(out["cpu"][1], out["cuda"][1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_the_cli_refuses_a_path_this_machine_cannot_train_before_any_run(tmp_path, capsys,
                                                                         monkeypatch):
    """model.engine = triton on a CPU without the interpreter: exit 2, the reason and the
    fix on one line, no store written."""
    from study import run
    from study.engine import triton_step

    monkeypatch.setattr(triton_step, "available",
                        lambda device: (False, "no CUDA device and TRITON_INTERPRET is not 1"))
    results = tmp_path / "r"
    smoke = Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml"
    rc = run.main([str(smoke), "--set", f"tracking.results_dir={results}",
                   "--set", "model.engine=triton", "--set", "ablation.variants=[peephole]",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error: peephole" in err and "on cpu: model.engine = 'triton': no CUDA device" in err
    assert not results.exists() or not any(results.rglob("mlflow.db"))
