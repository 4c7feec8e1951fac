"""Every file in examples/ passes `unsflow validate` (no connections, secrets not resolved)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.*"))


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"reference.json", "mqtt-to-kafka.json", "kafka-to-datalake.json"} <= names


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.suffix in (".json", ".yaml", ".yml")],
                         ids=lambda p: p.name)
def test_example_validates(path):
    result = subprocess.run([sys.executable, "-m", "unsflow.cli", "validate", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{path}: ok" in result.stdout
