"""Docstring examples are part of the docs; they must stay true."""

import doctest
import importlib

import pytest

MODULES = ["unsflow.codecs", "unsflow.engine.acks", "unsflow.testing.memory", "unsflow.testing.mqtt", "unsflow.engine.topics", "unsflow.engine.backoff", "unsflow.processors.remote",
           "unsflow.sources.kafka",
           "unsflow.engine.metrics", "unsflow.ml.store", "unsflow.lake.rows", "unsflow.lake.layout",
           "unsflow.sources._mqtt_client", "unsflow.sources._mqtt_wire", "unsflow.codecs.sparkplug",
           "unsflow.sources._opcua_values"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
