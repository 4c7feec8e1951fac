"""unsflow: edge ingestion for the manufacturing Unified Namespace.

MQTT in, processors, Parquet / MQTT / files out; a message is acknowledged
only once every target it was routed to has durably accepted it.
"""

from unsflow.config import PipelineConfig, load_config
from unsflow.errors import (
    ConfigError,
    PermanentError,
    SecretError,
    TransientError,
    UnsflowError,
)
from unsflow.message import Failure, Message

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Failure",
    "Message",
    "PermanentError",
    "PipelineConfig",
    "SecretError",
    "TransientError",
    "UnsflowError",
    "__version__",
    "load_config",
]
