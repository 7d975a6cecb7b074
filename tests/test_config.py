import pytest

from fastrobust.config import TrainConfig, parse_number, recipe_step, resolve, validate
from fastrobust.data import DATASETS
from fastrobust.engine.schedules import LRSchedule, eps_scale
from fastrobust.errors import ConfigError
from fastrobust.methods import get_method


@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), ("0.3", 0.3), ("3e-2", 0.03), (0.5, 0.5), (" 2 / 255 ", 2 / 255)])
def test_parse_number(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "1/0", "8//255", True])
def test_parse_number_refuses(text):
    with pytest.raises(ConfigError):
        parse_number(text)


def _resolved(**kw):
    cfg = TrainConfig(**kw)
    method = get_method(cfg.method)
    info = DATASETS[cfg.dataset]
    r = resolve(cfg, info, method)
    validate(r)
    method.check_config(r.eps, r.alpha, r.method_params)
    return r


def test_dataset_defaults():
    mnist = _resolved(dataset="mnist", method="pgd", method_params={"steps": 40})
    assert (mnist.model, mnist.eps, mnist.optimizer, mnist.batch_size) == ("mnist-cnn", 0.3, "adam", 100)
    assert mnist.alpha == pytest.approx(0.01)                   # the MNIST recipe step for PGD-40
    cifar = _resolved(dataset="cifar10", method="pgd", method_params={"steps": 7})
    assert (cifar.model, cifar.optimizer, cifar.batch_size) == ("preact-resnet18", "sgd", 128)
    assert cifar.eps == pytest.approx(8 / 255) and cifar.alpha == pytest.approx(2 / 255)
    assert _resolved(dataset="cifar10", method="fgsm-rs").alpha == pytest.approx(10 / 255)
    assert _resolved(dataset="cifar10", method="free").alpha == pytest.approx(8 / 255)
    assert cifar.lr_milestones == [5, 8]


def test_recipe_step():
    assert recipe_step(8 / 255, 10, 0.25) == pytest.approx(2 / 255)
    assert recipe_step(0.3, 40, 1 / 30) == pytest.approx(0.01)
    assert recipe_step(0.3, 10, 1 / 30) == pytest.approx(2.5 * 0.3 / 10)   # 10 recipe steps cannot cross the ball


@pytest.mark.parametrize("kw,words", [
    (dict(eps=-0.1), "eps must be >= 0"),
    (dict(epochs=0), "epochs must be an integer >= 1"),
    (dict(method="pgd", eps=0.1, alpha=0.2), "must not exceed eps"),
    (dict(lr_schedule="linear"), "lr_schedule must be one of"),
    (dict(method="pgd", method_params={"replays": 3}), "not a parameter of method 'pgd'"),
    (dict(method="free", method_params={"replays": 0}), "must be >= 1"),
    (dict(train_subset=0), "train_subset must be an integer >= 1"),
])
def test_invalid_values_refused(kw, words):
    with pytest.raises(ConfigError, match=words):
        _resolved(**kw)


def test_unknown_config_key_refused():
    with pytest.raises(ConfigError, match="unknown configuration key 'epoch'.*Allowed keys"):
        TrainConfig().update({"epoch": 3}, "test")


def test_unknown_method_refused():
    with pytest.raises(ConfigError, match="unknown method 'pgdd'.*Available methods"):
        get_method("pgdd")


def test_lr_schedules():
    ms = LRSchedule("multistep", 0.1, 10, (5, 8), 0.1)
    assert [ms(t) for t in (0, 4.99, 5, 8.5)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    cyc = LRSchedule("cyclic", 0.2, 10)
    assert cyc(0) == 0 and cyc(4) == pytest.approx(0.2) and cyc(10) == pytest.approx(0) and cyc(7) == pytest.approx(0.1)
    cos = LRSchedule("cosine", 1.0, 10)
    assert cos(0) == pytest.approx(1) and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0)
    assert LRSchedule("constant", 0.3, 10)(7) == 0.3


def test_eps_warmup():
    assert eps_scale(0.5, 2) == 0.25 and eps_scale(3, 2) == 1.0 and eps_scale(0, 0) == 1.0
