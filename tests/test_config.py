"""Config: merging, strict validation with helpful errors, _target_ construction."""

from __future__ import annotations

import pytest

from zflight.config import MODEL_NAMES, ConfigError, load_config
from zflight.run.targets import accepted_arguments, instantiate


def test_defaults_and_overrides():
    cfg = load_config(["trainer.max_epochs=3", "model.width=0.5"])
    assert cfg.trainer.max_epochs == 3 and cfg.model.width == 0.5 and cfg.data.name == "shapes"


def test_boolean_words_reach_string_choices():
    # YAML reads `true` as a boolean; a field whose choices are words still takes it
    assert load_config(["trainer.channels_last=true"]).trainer.channels_last == "true"
    assert load_config(["trainer.channels_last=False"]).trainer.channels_last == "false"


def test_experiment_and_group_choice():
    cfg = load_config(["experiment=imagenet", "data.root=/tmp", "logger=csv"])
    assert (
        cfg.data.image_size == 224 and cfg.optim.schedule == "plateau" and cfg.logger.name == "csv"
    )
    # command-line keys win over the experiment
    assert (
        load_config(
            ["experiment=imagenet", "data.root=/x", "trainer.max_epochs=2"]
        ).trainer.max_epochs
        == 2
    )


def test_unknown_key_names_key_and_choices():
    with pytest.raises(ConfigError) as e:
        load_config(["trainer.max_epoch=3"])
    msg = str(e.value)
    assert "trainer.max_epoch" in msg and "max_epochs" in msg and "did you mean" in msg


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        load_config(["trainer.max_epochs=abc"])


def test_invalid_choice_lists_choices():
    with pytest.raises(ConfigError, match="optim.name='adam' is not valid; choices: sgd, adamw"):
        load_config(["optim.name=adam"])
    with pytest.raises(ConfigError, match="valid choices: .*csv.*tensorboard"):
        load_config(["logger=mlflow"])
    with pytest.raises(ConfigError, match="model.name.*alexnet_style, zfnet"):
        load_config(["model.name=vgg"])


def test_imagefolder_needs_root_and_callbacks_need_target():
    with pytest.raises(ConfigError, match="data.root"):
        load_config(["data.name=imagefolder"])
    with pytest.raises(ConfigError, match="callbacks.x must be a mapping with a _target_"):
        load_config(["callbacks.x.every_n_epochs=2"])


def test_instantiate_reports_bad_arguments():
    obj = instantiate({"_target_": "collections.Counter", "a": 1}, "callbacks.c")
    assert obj["a"] == 1
    with pytest.raises(ConfigError, match="callbacks.m._target_='nope.Nope' cannot be imported"):
        instantiate({"_target_": "nope.Nope"}, "callbacks.m")
    with pytest.raises(
        ConfigError, match="callbacks.e.evry: .*has no argument .*valid: every_n_epochs"
    ):
        instantiate(
            {"_target_": "zflight.callbacks.base.VisualizationCallback", "evry": 1}, "callbacks.e"
        )


def test_callback_argument_typo_names_key_and_valid_arguments():
    spec = {"_target_": "zflight.callbacks.deconv.DeconvTopK", "selction": "most_active"}
    with pytest.raises(ConfigError) as e:
        instantiate(spec, "callbacks.deconv")
    msg = str(e.value)
    assert msg.startswith("callbacks.deconv.selction: zflight.callbacks.deconv.DeconvTopK has no")
    assert "did you mean callbacks.deconv.selection?" in msg
    # its own arguments and, through **kwargs, those of the VisualizationCallback base
    valid = msg.split("valid: ")[1].split(", ")
    assert {"selection", "layers", "k"} <= set(valid) and {"every_n_epochs", "strict"} <= set(valid)


def test_accepted_arguments_follow_kwargs_to_the_base():
    from zflight.callbacks.base import VisualizationCallback
    from zflight.callbacks.heatmaps import HeatMaps

    base = accepted_arguments(VisualizationCallback)
    assert base[:2] == ["every_n_epochs", "on_first_epoch"] and "grad" in base
    heat = accepted_arguments(HeatMaps)
    assert heat[-len(base) :] == base and len(heat) > len(base)

    class Open:
        def __init__(self, **kwargs):
            pass

    assert accepted_arguments(Open) == [], "**kwargs that end at object take nothing"
    assert accepted_arguments(lambda a, **kw: None) is None, "unknowable: not checked"


def test_bad_callback_value_is_a_config_error():
    spec = {"_target_": "zflight.callbacks.deconv.DeconvTopK", "every_n_epochs": 0}
    with pytest.raises(ConfigError, match="callbacks.deconv: every_n_epochs must be >= 1"):
        instantiate(spec, "callbacks.deconv")


def test_model_names_match_the_registry():
    from zflight.models import MODELS

    assert tuple(sorted(MODELS)) == MODEL_NAMES
