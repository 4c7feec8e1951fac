"""The JSON Schema of the config, generated from the same models that validate it."""

from __future__ import annotations

from typing import Any

from unsflow.config.models import pipeline_model

__all__ = ["json_schema"]


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a pipeline config, keys as users write them."""
    schema = pipeline_model().model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "unsflow pipeline"
    return schema
