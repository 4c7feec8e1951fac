"""Writes docs/config-reference.md from the config's JSON Schema.

Run: python scripts/gen_config_reference.py   (tests fail when the file is stale)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"


def _type(prop: Any, defs: dict[str, Any]) -> str:
    if not isinstance(prop, dict):
        return "any"
    if "oneOf" in prop:
        return " or ".join(_type(p, defs) for p in prop["oneOf"])
    if "$ref" in prop:
        return "object: " + prop["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " or ".join(_type(p, defs) for p in prop["anyOf"])
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    t = prop.get("type", "any")
    if t == "array":
        return f"list of {_type(prop.get('items', {}), defs)}"
    if t == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map of name to {_type(prop['additionalProperties'], defs)}"
    return str(t)


def _table(model: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    required = set(model.get("required", []))
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, prop in model.get("properties", {}).items():
        default = "required" if key in required else json.dumps(prop.get("default", None))
        desc = prop.get("description", "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {_type(prop, defs).replace('|', '/')} | {default} | {desc} |")
    return rows


def render() -> str:
    from unsflow.config import json_schema

    schema = json_schema()
    defs = schema.get("$defs", {})
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config models by `python scripts/gen_config_reference.py`;",
        "`unsflow schema` prints the same as JSON Schema. Keys are kebab-case; unknown keys",
        "are errors. Host and port of the UNS broker default to `EDGE_BROKER_HOST` and",
        "`EDGE_MQTT_PORT`; `unsflow run` without a file reads `EDGE_SUBSCRIPTION_CONFIG`.",
        "",
        "## Top level",
        "",
        *_table(schema, defs),
    ]
    for name in sorted(defs):
        lines += ["", f"## {name}", ""]
        if defs[name].get("description"):
            lines += [" ".join(defs[name]["description"].split()), ""]
        lines += _table(defs[name], defs)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.exists() and OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
