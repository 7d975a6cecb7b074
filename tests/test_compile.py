"""``--compile`` on the CPU: attack steps without weight gradients, and nothing compiled after the first epoch.

The graphs are traced with the ``aot_eager`` backend (the same dynamo guards, recompiles and AOT joint
graphs as inductor's, without generating C++), with a backward compiler that records which inputs of each
compiled forward get a gradient."""

import pytest
import torch

import fastrobust
from fastrobust.attacks.compiled import eager, input_grad_only, is_compiled
from fastrobust.attacks.kernel import compacts, input_grad
from fastrobust.config import TrainConfig
from fastrobust.engine import compile as compile_mod

from helpers import TinyNet


class Recorder:
    """An AOT-autograd backend recording, for each compiled backward, which of its forward's inputs
    (parameters, buffers, the input) get a gradient."""

    def __init__(self):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        self.backwards = []

        def fw(gm, example):
            return make_boxed_func(gm.forward)

        def bw(gm, example):
            output = next(n for n in gm.graph.nodes if n.op == "output")
            self.backwards.append([a is not None for a in output.args[0]])
            return make_boxed_func(gm.forward)

        self.backend = aot_autograd(fw_compiler=fw, bw_compiler=bw)


@pytest.fixture
def recorder(monkeypatch):
    torch._dynamo.reset()
    rec = Recorder()
    monkeypatch.setattr(compile_mod, "BACKEND", rec.backend)
    yield rec
    torch._dynamo.reset()


def test_an_attack_step_on_a_compiled_model_computes_the_input_gradient_only(recorder):
    torch.manual_seed(0)
    model = TinyNet().train()
    compiled = compile_mod.compile_model(model)
    assert is_compiled(compiled) and not is_compiled(model) and eager(compiled) is model
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    grad, _ = input_grad(compiled, x, y)
    assert [sum(b) for b in recorder.backwards] == [1]   # of its 5 inputs (4 parameters, x): x's gradient alone
    assert all(p.requires_grad for p in model.parameters())   # restored after the attack's forward
    assert torch.allclose(grad, input_grad(model, x, y)[0], atol=1e-6)   # the eager gradient
    torch.nn.functional.cross_entropy(compiled(x), y).backward()   # the training step: weight gradients
    assert sum(recorder.backwards[-1]) == 4 and all(p.grad is not None for p in model.parameters())
    assert not compacts(compiled.eval(), x) and compacts(model.eval(), x)   # compiled: masked, static shapes


def test_input_grad_only_restores_the_flags_on_an_error_and_leaves_eager_models_alone():
    model = TinyNet()
    model.net[1].weight.requires_grad_(False)
    compiled = torch.compile(model, backend="eager")
    with pytest.raises(RuntimeError), input_grad_only(compiled):
        assert not any(p.requires_grad for p in model.parameters())
        raise RuntimeError
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]
    with input_grad_only(model):   # eager: untouched
        assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]


class CountsPerEpoch:
    def __init__(self):
        self.counts = []

    def on_epoch_end(self, record):
        self.counts.append(compile_mod.compile_counts())


# 230 training examples at batch 100: a last partial batch of 30 in every epoch
TINY = dict(dataset="mnist-subset", train_subset=230, val_size=50, test_subset=50, batch_size=100, val_steps=2,
            test_steps=2, epochs=2, eps=0.3, compile=True)


@pytest.mark.parametrize("method, params", [("pgd", {"steps": 2}), ("fat", {"steps": 3, "tau": 0}),
                                            ("trades", {"steps": 2}),
                                            # graph-free checks at tau 0.7: sub-batch refreshes of 1 to 61
                                            # examples here, which would compile a graph per size
                                            ("gaat", {"steps": 5, "check_graph": False, "tau": 0.7})])
def test_nothing_is_compiled_after_the_first_epoch(tmp_path, recorder, method, params):
    counts = CountsPerEpoch()
    summary = fastrobust.train(TrainConfig(**TINY, method=method, method_params=params, out=str(tmp_path / "r")),
                               progress=False, echo=lambda s: None, callbacks=[counts])
    first, second = counts.counts
    assert first["compiles"] > 0, "nothing was compiled"
    assert second == first, f"{method}: compiled again in epoch 2 ({first} -> {second})"
    # attack graphs (input gradient only) were traced besides the training step's
    assert any(sum(b) == 1 for b in recorder.backwards), recorder.backwards
    assert summary["passes_per_example"] > 0
