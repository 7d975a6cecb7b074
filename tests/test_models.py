"""Tests for fastrobust.models: the registry, every built-in model, Normalize and Classifier."""

import pytest
import torch
from torch import nn

from fastrobust.errors import ConfigError
from fastrobust.models import Classifier, Normalize, create_model, list_models, register_model
from fastrobust.models import registry

# Small options per registered model, so the whole zoo builds and runs in a few seconds.
SMALL = {
    "mnist-cnn": {},
    "smallcnn": {},
    "preact-resnet18": {"width": 8},
    "resnet18": {"width": 8},
    "wrn-34-10": {"depth": 10, "widen": 1},
    "vgg16": {"width": 8},
    "resnet50": {"width": 8},
}


def test_every_registered_model_is_covered():
    assert sorted(e.name for e in list_models()) == sorted(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("channels,size,classes", [(1, 28, 10), (3, 32, 100)])
def test_model_builds_and_gives_logits(name, channels, size, classes):
    model = create_model(name, num_classes=classes, in_channels=channels, image_size=(size, size), **SMALL[name])
    assert isinstance(model, Classifier)
    x = torch.rand(3, channels, size, size)
    assert model(x).shape == (3, classes)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, classes)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_channels_last_forward_matches(name):
    model = create_model(name, **SMALL[name]).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_builds_on_meta_device(name):
    with torch.device("meta"):
        model = create_model(name, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), **SMALL[name])
    assert model.normalize.std.is_meta and model(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 10)


@pytest.mark.parametrize(
    "name,options,params",
    [("preact-resnet18", {}, 11_172_170), ("resnet18", {}, 11_173_962), ("wrn-34-10", {}, 46_160_474),
     ("mnist-cnn", {}, 166_406)],
)
def test_reference_parameter_counts(name, options, params):
    size = (28, 28) if name == "mnist-cnn" else (32, 32)
    model = create_model(name, in_channels=1 if name == "mnist-cnn" else 3, image_size=size, **options)
    assert sum(p.numel() for p in model.parameters()) == params


def test_resnet50_is_the_imagenet_resnet50():
    """At full width on 224x224 ImageNet input (built on the meta device: no memory, no compute): the standard
    ResNet-50 parameter count (25,557,032 with 1000 classes), 1000 logits, and its layout."""
    with torch.device("meta"):
        model = create_model("resnet50", num_classes=1000, image_size=224, mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225))
        out = model(torch.empty(2, 3, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert out.shape == (2, 1000)
    assert isinstance(model.net.stem[0], nn.Conv2d) and model.net.stem[0].kernel_size == (7, 7)
    assert isinstance(model.net.stem[-1], nn.MaxPool2d)
    assert len(model.net.blocks) == 3 + 4 + 6 + 3 and model.net.fc.in_features == 2048
    # the stride of a downsampling block sits on its 3x3 convolution
    assert model.net.blocks[3].conv2.stride == (2, 2) and model.net.blocks[3].conv1.stride == (1, 1)


def test_list_models_reports_options_and_defaults():
    entries = {e.name: e for e in list_models()}
    assert entries["preact-resnet18"].options == {"width": 64}
    assert entries["wrn-34-10"].options == {"depth": 34, "widen": 10, "drop": 0.0}
    assert entries["smallcnn"].options == {"drop": 0.5}
    assert entries["mnist-cnn"].options == {}
    assert all(e.description for e in entries.values())


def test_normalize_math_and_buffers():
    norm = Normalize((0.5, 0.25, 0.0), (0.5, 2.0, 1.0))
    x = torch.rand(2, 3, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 2.0, x[:, 2]], 1)
    torch.testing.assert_close(norm(x), expected)
    assert set(norm.state_dict()) == {"mean", "std"}
    assert norm.to(torch.float64).mean.dtype == torch.float64


def test_classifier_is_net_of_normalised_input():
    mean, std = (0.1, 0.2, 0.3), (0.2, 0.3, 0.4)
    model = create_model("mnist-cnn", mean=mean, std=std)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), model.net(model.normalize(x)))
    torch.testing.assert_close(model.input_std, torch.tensor(std))
    identity = create_model("mnist-cnn")
    torch.testing.assert_close(identity.normalize(x), x)


def test_state_dict_round_trip_carries_mean_and_std():
    src = create_model("smallcnn", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)).eval()
    dst = create_model("smallcnn").eval()
    dst.load_state_dict(src.state_dict())
    torch.testing.assert_close(dst.normalize.mean, src.normalize.mean)
    torch.testing.assert_close(dst.input_std, torch.tensor((0.2, 0.25, 0.3)))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "nope"}, "available: .*mnist-cnn"),
        ({"name": "preact-resnet18", "depth": 3}, "width=64"),
        ({"name": "mnist-cnn", "mean": (0.5,), "std": (1.0, 1.0, 1.0)}, "in_channels=3"),
        ({"name": "mnist-cnn", "in_channels": 1, "mean": (0.5, 0.5, 0.5)}, "in_channels=1"),
        ({"name": "mnist-cnn", "std": (1.0, 0.0, 1.0)}, "std must be > 0"),
        ({"name": "mnist-cnn", "num_classes": 0}, "num_classes"),
        ({"name": "mnist-cnn", "image_size": (32, 32, 3)}, "image_size"),
        ({"name": "smallcnn", "image_size": 12}, "at least 16x16"),
        ({"name": "smallcnn", "drop": 1.0}, r"drop must be a number in \[0, 1\)"),
        ({"name": "preact-resnet18", "width": 0}, "width must be an integer >= 1"),
        ({"name": "wrn-34-10", "depth": 12}, "6n\\+4"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model(**kwargs)


def test_register_model_infers_options(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("toy", "a linear toy")
    def toy(num_classes, in_channels, image_size, *, hidden: int = 4):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], hidden),
                             nn.Linear(hidden, num_classes))

    assert [e.options for e in list_models() if e.name == "toy"] == [{"hidden": 4}]
    model = create_model("toy", num_classes=3, in_channels=1, image_size=5, hidden=7)
    assert model.net[1].out_features == 7 and model(torch.rand(2, 1, 5, 5)).shape == (2, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("toy", "again")(toy)
