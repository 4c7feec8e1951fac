"""The code's shape, as STYLE.md states it: one exception tree, one adapter per library's
internals, no engine code depending on the testing helpers."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import unsflow

SRC = Path(unsflow.__file__).parent


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(SRC)], "unsflow."))


def sources() -> dict[str, str]:
    return {str(p.relative_to(SRC.parent)): p.read_text() for p in SRC.rglob("*.py")}


def test_every_public_exception_class_lives_in_errors_py() -> None:
    elsewhere = []
    for name in modules():
        module = importlib.import_module(name)
        for attr, cls in inspect.getmembers(module, inspect.isclass):
            if (issubclass(cls, BaseException) and cls.__module__ == name
                    and not attr.startswith("_") and name != "unsflow.errors"):
                elsewhere.append(f"{name}.{attr}")
    assert elsewhere == []


def test_only_the_adapter_touches_gmqtt_internals() -> None:
    pattern = re.compile(r"_package_handler|_connection\.|_send_ping_request|"
                         r"_handle_qos_[12]_publish_packet|CommandWithMidPacket|proto_ver")
    found = sorted(path for path, text in sources().items() if pattern.search(text))
    assert found == ["unsflow/sources/_mqtt_client.py"]


def test_no_library_module_imports_the_testing_helpers() -> None:
    offenders = []
    for path, text in sources().items():
        if path.startswith("unsflow/testing/"):
            continue
        for node in ast.walk(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "unsflow.testing" or n.startswith("unsflow.testing.") for n in names):
                offenders.append(path)
    assert offenders == []
