"""Hyperparameters of every model class are primitives, so checkpoints load with weights_only=True."""

from __future__ import annotations

import inspect

import pytest

from clm_torch.runs import model_classes

PRIMITIVES = (int, float, str, bool, type(None))


def _is_primitive(v) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_is_primitive(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_primitive(x) for k, x in v.items())
    return isinstance(v, PRIMITIVES)


@pytest.mark.parametrize("name", sorted(model_classes()))
def test_constructor_defaults_are_primitives(name: str) -> None:
    cls = model_classes()[name]
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.default is not inspect.Parameter.empty:
            assert _is_primitive(p.default), f"{name}.{p.name} default {p.default!r} is not a primitive"


def test_every_model_family_is_registered() -> None:
    assert {"ChurnClassifier", "InfoGapVAE", "EmbeddingRecommender", "SpendRegressor"} <= set(model_classes())
