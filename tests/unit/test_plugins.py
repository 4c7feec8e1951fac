"""A third-party package adds a target through an entry point, without touching unsflow."""

from __future__ import annotations

import sys
import textwrap

import pytest

from unsflow import registry
from unsflow.config.loading import parse_config
from unsflow.config.models import pipeline_model
from unsflow.errors import ConfigError

PLUGIN = '''
from typing import Literal
from pydantic import Field
from unsflow.config.models import TargetConfig
from unsflow.targets.base import Target

class ConsoleTargetConfig(TargetConfig):
    type: Literal["console"]
    prefix: str = Field(">", description="Printed before each payload.")

class ConsoleTarget(Target[ConsoleTargetConfig]):
    config_class = ConsoleTargetConfig
    async def write(self, batch):
        for msg in batch:
            print(self.config.prefix, msg.payload.decode())
        return []
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    (tmp_path / "unsflow_console.py").write_text(PLUGIN)
    dist = tmp_path / "unsflow_console-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: unsflow-console\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [unsflow.targets]
        console = unsflow_console:ConsoleTarget
        influx = unsflow_console_missing:InfluxTarget
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.clear_cache()
    pipeline_model.cache_clear()
    yield
    sys.modules.pop("unsflow_console", None)
    registry.clear_cache()
    pipeline_model.cache_clear()


def test_entry_point_target_validates_and_loads(installed_plugin):
    cfg = parse_config({"targets": {"out": {"type": "console", "prefix": "#"}},
                        "subscriptions": {"a/#": {"qos": 1, "target": "out"}}}, env={})
    assert cfg.targets["out"].prefix == "#"
    assert registry.load("targets", "console").__name__ == "ConsoleTarget"
    with pytest.raises(ConfigError, match=r"targets\.out\.colour"):
        parse_config({"targets": {"out": {"type": "console", "colour": "red"}},
                      "subscriptions": {"a/#": {"qos": 1, "target": "out"}}}, env={})


def test_a_broken_plugin_is_left_out_not_fatal(installed_plugin):
    with pytest.raises(ConfigError) as info:
        parse_config({"targets": {"out": {"type": "influx"}},
                      "subscriptions": {"a/#": {"qos": 1, "target": "out"}}}, env={})
    assert "targets.out.type" in str(info.value) and "'console'" in str(info.value)
