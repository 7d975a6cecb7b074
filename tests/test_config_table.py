"""One table for the configuration: the command line, YAML files and ``fit`` accept the same keys, all
generated from TrainConfig's fields, and the resume and bench comparisons share one rule."""

import argparse
import dataclasses

import pytest
import torch

from fastrobust import fitting
from fastrobust.cli import TRAIN_OPTIONS, build_parser, config_from_args
from fastrobust.config import RESUME_FREE, TrainConfig, differences, same_setting
from fastrobust.errors import ConfigError

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# a value of the right kind for every key, as written on the command line and as the config holds it
SAMPLES = {"model_options": (["width=3"], {"width": 3}), "normalize": (["dataset"], "dataset"),
           "lr_milestones": (["3,4"], [3.0, 4.0]), "log": (["tensorboard"], ["tensorboard"])}


def _sample(key):
    if key in SAMPLES:
        return SAMPLES[key]
    f = FIELDS[key]
    kwargs = f.metadata["cli"]
    if kwargs.get("action") in ("store_true", argparse.BooleanOptionalAction):
        return [], True
    if "choices" in kwargs:
        return [kwargs["choices"][-1]], kwargs["choices"][-1]
    kind = str(f.type)
    if "int" in kind:
        return ["3"], 3
    if "float" in kind:
        return ["0.25"], 0.25
    return ["x.y"], "x.y"


def test_every_key_has_a_help_a_group_and_a_flag_unless_it_is_set_otherwise():
    flags = {key for _, key, _ in TRAIN_OPTIONS}
    for key, f in FIELDS.items():
        assert f.metadata["help"] and f.metadata["group"], key
        assert (key in flags) == (f.metadata["flag"] is not None), key
    assert set(FIELDS) - flags == {"method_params"}   # given through each method's own flags


@pytest.mark.parametrize("key", sorted(k for k in FIELDS if k != "method_params"))
def test_the_command_line_sets_each_key_as_yaml_would(key):
    flag = next(flag for flag, k, _ in TRAIN_OPTIONS if k == key)
    words, value = _sample(key)
    args = [] if key == "method" else ["--method", "pgd"]
    args = build_parser().parse_args(["train", *args, *[w for word in words for w in (flag, word)]] if words
                                     else ["train", *args, flag])
    from_cli = config_from_args(args)
    from_yaml = TrainConfig().update({key: value}, "test.yaml")
    assert getattr(from_cli, key) == getattr(from_yaml, key) == value


def test_fit_takes_every_key_by_name_or_as_its_own_argument():
    own = set(fitting.fit.__code__.co_varnames[:fitting.fit.__code__.co_argcount + fitting.fit.__code__.co_kwonlyargcount])
    by_name = set(fitting._fit_keys())
    not_for_fit = {k for k, f in FIELDS.items() if not f.metadata["fit"]}
    assert by_name | (own & set(FIELDS)) | not_for_fit == set(FIELDS)
    assert not_for_fit == {"dataset", "data_dir", "method_params"}   # data and method parameters come otherwise
    with pytest.raises(ConfigError, match="unknown argument.*data_dir"):
        fitting.fit(torch.nn.Linear(1, 1), None, data_dir="x")


def test_resume_and_bench_ignore_the_same_keys():
    assert RESUME_FREE == {"out", "device", "data_dir", "dist_timeout", "log", "workers"}
    saved = TrainConfig(epochs=3, lr_schedule="multistep", eps=8 / 255).to_dict()
    now = dict(saved, out="elsewhere", log=["tensorboard"], lr_schedule="piecewise", eps="8/255")
    assert differences(now, saved) == []
    assert differences(dict(now, epochs=4), saved) == ["epochs was 3, now 4"]
    assert same_setting("lr", "1e-3", 0.001) and not same_setting("lr", 0.01, 0.001)
