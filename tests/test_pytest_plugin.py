"""Fixtures of sciddpm's pytest plugin for plugin authors: an isolated registry, tiny source and pipeline."""

from __future__ import annotations

import types

import pytest

from sciddpm.components.encoders import Identity, IdentityConfig
from sciddpm.hooks import Component, hookimpl
from sciddpm.registry import get_registry
from sciddpm.testing import check_component


def _hooks() -> types.SimpleNamespace:
    @hookimpl
    def sciddpm_components():
        return [Component("encoder", "plain", Identity, IdentityConfig, "a lab's identity encoder")]

    return types.SimpleNamespace(sciddpm_components=sciddpm_components, __name__="labplug")


def test_isolated_registry_holds_the_builtins_and_only_the_given_plugin(sciddpm_registry):
    registry = sciddpm_registry(_hooks())
    assert get_registry() is registry
    plugins = {e.plugin for e in registry.entries()}
    assert plugins == {"sciddpm", "labplug"}
    check_component("encoder", "labplug/plain")  # names resolve through the isolated registry
    with pytest.raises(LookupError, match="no installed sciddpm plugin 'nope'"):
        sciddpm_registry("nope")


def test_tiny_source_and_pipeline(tiny_source, tiny_pipeline):
    assert len(tiny_source) == 16 and tiny_source.sample_shape == (2, 8, 8) and tiny_source.num_classes == 2
    check_component("data", lambda: tiny_source)
    x = tiny_pipeline.sample(2, steps=2, seed=0)
    assert x.shape == (2, 2, 8, 8)
