"""`--log-format json`: one object per line, with the component id when the message names one."""

import json
import logging

from unsflow.cli import _JsonFormatter


def fmt(message: str, *args: object) -> dict:
    record = logging.LogRecord("unsflow.sources.mqtt", logging.WARNING, __file__, 1, message,
                               args, None)
    return json.loads(_JsonFormatter().format(record))


def test_component_id_is_a_field():
    entry = fmt("[%s] disconnected from broker; reconnecting in %.1fs", "uns", 0.5)
    assert entry["component"] == "uns"
    assert entry["message"] == "[uns] disconnected from broker; reconnecting in 0.5s"
    assert entry["level"] == "warning" and entry["logger"] == "unsflow.sources.mqtt"


def test_no_component_field_without_an_id():
    assert "component" not in fmt("stopped: %s", {"unrouted": 0})
