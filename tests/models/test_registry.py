"""The model registry finds builders by name, passes overrides and refuses mistakes."""

import pytest
from torch import nn

from sightkit.models import create_model, list_models, register_model
from sightkit.models import registry as registry_module


def test_detr_models_are_registered() -> None:
    assert {"detr_r50", "detr_r18_tiny"} <= set(list_models())
    assert list_models() == sorted(list_models())


def test_overrides_reach_the_builder() -> None:
    model = create_model("detr_r18_tiny", num_classes=3, num_queries=7)
    assert model.class_embed.out_features == 4
    assert model.query_embed.num_embeddings == 7


def test_unknown_override_names_the_key() -> None:
    with pytest.raises(TypeError, match="num_clases"):
        create_model("detr_r18_tiny", num_clases=3)


def test_unknown_model_suggests_the_closest_name() -> None:
    with pytest.raises(ValueError, match="unknown model name 'detr_r18_tyni'; did you mean 'detr_r18_tiny'"):
        create_model("detr_r18_tyni")
    with pytest.raises(ValueError, match=r"available: .*detr_r50"):
        create_model("yolo")


def test_a_name_is_registered_once() -> None:
    def _test_model() -> nn.Module:
        return nn.Identity()

    register_model(_test_model)
    try:
        assert register_model(_test_model) is _test_model  # the same builder again is harmless
        assert isinstance(create_model("_test_model"), nn.Identity)

        def other() -> nn.Module:
            return nn.Identity()

        other.__name__ = "_test_model"
        with pytest.raises(ValueError, match="model name '_test_model' is already registered"):
            register_model(other)
    finally:
        registry_module._MODELS.pop("_test_model")
