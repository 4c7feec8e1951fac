"""Component registry: a ``type`` name maps to ``"module:Class"``.

Built-in components are listed here as import paths so that ``import unsflow``
stays fast; a third-party package adds a component with an entry point in one
of the groups ``unsflow.sources``, ``unsflow.processors``, ``unsflow.targets``
or ``unsflow.secrets``::

    [project.entry-points."unsflow.targets"]
    influx = "my_package.influx:InfluxTarget"

A component class has a ``config_class`` (a pydantic model whose ``type`` field
is a ``Literal`` of its type name).
"""

from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Literal

__all__ = ["Kind", "BUILTINS", "names", "load", "load_all"]

Kind = Literal["sources", "processors", "targets", "secrets"]

BUILTINS: dict[str, dict[str, str]] = {
    "sources": {
        "mqtt": "unsflow.sources.mqtt:MqttSource",
        "kafka": "unsflow.sources.kafka:KafkaSource",
        "opcua": "unsflow.sources.opcua:OpcuaSource",
    },
    "processors": {
        "remote": "unsflow.processors.remote:RemoteProcessor",
        "parse": "unsflow.processors.parse:ParseProcessor",
        "python": "unsflow.processors.python:PythonProcessor",
        "window": "unsflow.processors.window:WindowProcessor",
        "threshold": "unsflow.processors.threshold:ThresholdProcessor",
        "model": "unsflow.processors.model:ModelProcessor",
        "filter": "unsflow.processors.filter:FilterProcessor",
        "sparkplug": "unsflow.processors.sparkplug:SparkplugProcessor",
    },
    "targets": {
        "s3": "unsflow.targets.object_store:ObjectStoreTarget",
        "mqtt": "unsflow.targets.mqtt:MqttTarget",
        "file": "unsflow.targets.file:FileTarget",
        "kafka": "unsflow.targets.kafka:KafkaTarget",
    },
    "secrets": {
        "env": "unsflow.secrets.env:EnvSecretProvider",
        "file": "unsflow.secrets.file:FileSecretProvider",
        "aws-secrets-manager": "unsflow.secrets.aws:AwsSecretsManagerProvider",
    },
}


@lru_cache(maxsize=None)
def _table(kind: str) -> dict[str, str]:
    table = dict(BUILTINS[kind])
    for ep in entry_points(group=f"unsflow.{kind}"):
        # Built-ins win: an installed package cannot silently replace them.
        table.setdefault(ep.name, ep.value)
    return table


def names(kind: Kind) -> list[str]:
    """Every registered type name of ``kind``, sorted."""
    return sorted(_table(kind))


def load(kind: Kind, type_name: str) -> Any:
    """The component class registered as ``type_name``; KeyError if none is."""
    target = _table(kind)[type_name]
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def load_all(kind: Kind) -> dict[str, Any]:
    """Every component class of ``kind``.

    A built-in that fails to import is a bug and raises. A third-party plugin
    that fails to import is logged and left out, so one broken package does
    not stop every pipeline; a config naming its type then fails validation
    with the list of types that are available.
    """
    classes: dict[str, Any] = {}
    for name in names(kind):
        try:
            classes[name] = load(kind, name)
        except Exception:
            if name in BUILTINS[kind]:
                raise
            logging.getLogger("unsflow.registry").exception(
                "plugin %s %r (%s) cannot be loaded; it is left out", kind, name, _table(kind)[name])
    return classes


def clear_cache() -> None:
    """Forget the entry-point scan (tests that install a plugin call this)."""
    _table.cache_clear()
