"""YOPO-m-n (methods/yopo.py): its weight gradient, its first layer, and models that do or do not name it."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fastrobust.errors import ConfigError
from fastrobust.methods import Batch
from fastrobust.models import create_model, list_models
from helpers import EPS, make_method, synthetic


def test_one_minibatch_gives_the_step_the_papers_gradient():
    """outer 2, inner 2 on TinyNet, replayed by hand: per outer pass the CE gradient of every weight and g at the
    first layer's output; inner signed steps on sum(first_layer(x + delta) * g); the first layer's weights also
    get the gradient of that sum at the new delta; the step's gradient is the total times 2/outer."""
    model, method, _, _ = make_method("yopo", outer=2, inner=2)
    x, y = synthetic(12)
    seen = {}

    def step(loss, wrt=None):
        seen["grads"] = torch.autograd.grad(loss, list(model.parameters()))

    torch.manual_seed(5)
    out = method.train_batch(model, Batch(x, y, EPS, EPS / 4), step)
    assert out.passes == pytest.approx(12 * 2)

    torch.manual_seed(5)
    params, layer = list(model.parameters()), model.net[1]
    total = [torch.zeros_like(p) for p in params]
    delta = torch.empty_like(x).uniform_(-EPS, EPS)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(2):
        h = layer(model.net[0]((x + delta).clamp(0, 1)))
        loss = F.cross_entropy(model.net[3](model.net[2](h)), y)
        *grads, g = torch.autograd.grad(loss, params + [h])
        total = [t + gr for t, gr in zip(total, grads)]
        for _ in range(2):
            point = (x + delta).clamp(0, 1).requires_grad_(True)
            (gx,) = torch.autograd.grad((layer(model.net[0](point)) * g).sum(), point)
            delta = (delta + EPS / 4 * gx.sign()).clamp(-EPS, EPS)
            delta = (x + delta).clamp(0, 1) - x
        w, b = torch.autograd.grad((layer(model.net[0]((x + delta).clamp(0, 1))) * g).sum(), [layer.weight, layer.bias])
        total[0], total[1] = total[0] + w, total[1] + b
    for got, expected in zip(seen["grads"], total):
        assert torch.allclose(got, expected, atol=1e-6)


def test_inner_steps_run_the_model_only_up_to_its_first_layer():
    model, method, step, _ = make_method("yopo", outer=3, inner=4)
    calls = {"first": 0, "last": 0}
    model.net[1].register_forward_hook(lambda *a: calls.__setitem__("first", calls["first"] + 1))
    model.net[3].register_forward_hook(lambda *a: calls.__setitem__("last", calls["last"] + 1))
    method.train_batch(model, Batch(*synthetic(12), EPS, EPS / 4), step)
    assert calls == {"last": 3, "first": 3 * (1 + 4 + 1)}


@pytest.mark.parametrize("name", [entry.name for entry in list_models()])
def test_every_registered_model_declares_the_layer_that_reads_its_input_first(name):
    model = create_model(name, num_classes=10, in_channels=1 if "mnist" in name else 3,
                         image_size=(28, 28) if "mnist" in name else (32, 32))
    layer = model.get_submodule(model.first_layer)
    order = []
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            module.register_forward_hook(lambda m, *a: order.append(m))
    model.eval()
    with torch.no_grad():
        model(torch.rand(2, *((1, 28, 28) if "mnist" in name else (3, 32, 32))))
    assert order[0] is layer


class UserResNet(nn.Module):
    """Built as torchvision builds its models: positional constructor arguments, a ``conv1`` first layer."""

    def __init__(self, channels, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn1(self.conv1(x))), 1).flatten(1))


def test_a_user_model_is_refused_in_one_line_unless_it_names_its_first_layer():
    _, method, step, _ = make_method("yopo")
    model = UserResNet(4, 3).train()
    x, y = synthetic(8)
    with pytest.raises(ConfigError, match="--layer NAME") as err:
        method.train_batch(model, Batch(x, y, EPS, EPS / 4), step)
    assert "\n" not in str(err.value) and "conv1" in str(err.value)
    _, named, step, _ = make_method("yopo", layer="conv2")
    with pytest.raises(ConfigError, match="no submodule 'conv2'"):
        named.train_batch(model, Batch(x, y, EPS, EPS / 4), step)
    _, named, _, _ = make_method("yopo", layer="conv1")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def user_step(loss, wrt=None):
        opt.zero_grad()
        loss.backward()
        opt.step()

    before = model.conv1.weight.detach().clone()
    named.train_batch(model, Batch(x, y, EPS, EPS / 4), user_step)
    assert not torch.equal(before, model.conv1.weight)
    model.first_layer = "conv1"          # or the model names it itself
    _, declared, _, _ = make_method("yopo")
    declared.train_batch(model, Batch(x, y, EPS, EPS / 4), user_step)


def test_fit_refuses_before_writing_anything_and_trains_a_named_user_model(tmp_path):
    """The check runs with the configuration (Method.check_model), so a refused run leaves no folder."""
    import fastrobust
    from test_fit import COMMON, PlainDataset

    with pytest.raises(ConfigError, match="--layer NAME"):
        fastrobust.fit(UserResNet(4, 3), PlainDataset(64, 0), method="yopo", out=str(tmp_path / "refused"),
                       progress=False, echo=lambda s: None, **COMMON)
    assert not (tmp_path / "refused").exists()
    summary = fastrobust.fit(UserResNet(4, 3), PlainDataset(96, 0), test_data=PlainDataset(32, 1), method="yopo",
                             method_params={"layer": "conv1"}, out=str(tmp_path / "named"), progress=False,
                             echo=lambda s: None, **COMMON)
    assert summary["passes_per_example"] == pytest.approx(5)
