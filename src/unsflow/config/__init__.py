"""Configuration: models, loading (file, environment) and JSON Schema."""

from unsflow.config.loading import load_config, load_config_text
from unsflow.config.models import (
    BrokerConfig,
    ComponentConfig,
    Model,
    PipelineConfig,
    ProcessorConfig,
    SecretRef,
    SubscriptionConfig,
    TargetConfig,
    TlsConfig,
)
from unsflow.config.schema import json_schema

__all__ = [
    "BrokerConfig",
    "ComponentConfig",
    "Model",
    "PipelineConfig",
    "ProcessorConfig",
    "SecretRef",
    "SubscriptionConfig",
    "TargetConfig",
    "TlsConfig",
    "json_schema",
    "load_config",
    "load_config_text",
]
