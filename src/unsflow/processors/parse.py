"""parse: decode each message's payload into a record, once.

Contract:

- A message whose payload decodes becomes ``message.derive(record=...)``: JSON
  gives whatever the JSON holds, CSV gives one dict per payload with the
  configured ``columns`` as keys (numbers become numbers), ``debezium`` gives
  one row per change event with its table as the topic and drops tombstones
  (:mod:`unsflow.codecs.debezium`).
- A message that cannot be decoded (invalid UTF-8, empty, not JSON, wrong CSV
  field count) is returned as a :class:`~unsflow.message.Failure` whose error
  says why; the rest of the batch goes on. Nothing is retried: a payload that
  does not decode now never will.
- A message that is already decoded (``record`` is not ``NOT_DECODED``) passes
  unchanged, so a pipeline may put ``parse`` after another decoding step.
- Large batches are decoded in a worker thread so that the event loop stays
  free (the processor contract: no more than ~1 ms of CPU per batch on the loop).

Example, the Red Hat (MANUela) demo's sensors::

    "processors": {"sensor-csv": {"type": "parse", "format": "csv",
                   "columns": ["machineId", "deviceId", "value", "epochMillis"]}}
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from unsflow.codecs import decode_csv, decode_json
from unsflow.codecs.debezium import decode_changes
from unsflow.config.models import ProcessorConfig
from unsflow.errors import DecodeError
from unsflow.message import NOT_DECODED, Failure, Message
from unsflow.processors.base import Processor, ProcessResult

__all__ = ["ParseProcessor", "ParseProcessorConfig"]

# Below this many messages the hop to a thread costs more than decoding on the loop
# (orjson: ~1 us per small payload; csv: ~5 us per line).
_THREAD_MIN = 200


class ParseProcessorConfig(ProcessorConfig):
    """Decode payloads (JSON or one CSV line) into records."""

    type: Literal["parse"] = Field(description="Processor type: parse.")
    format: Literal["json", "csv", "debezium"] = Field(
        "json", description="Payload format: json, csv (one line per payload), or debezium "
        "(change events of Kafka Connect's JSON converter, with or without schemas)."
    )
    # Declared after `format`: the validator below reads it.
    columns: list[str] | None = Field(
        None,
        validate_default=True,
        description="csv: the column names, in order (required with format csv), "
        "e.g. [machineId, deviceId, value, epochMillis].",
    )
    delimiter: str = Field(
        ",", min_length=1, max_length=1, description="csv: the field delimiter (one character)."
    )

    @field_validator("columns")
    @classmethod
    def _columns_match_format(cls, value: list[str] | None,
                              info: ValidationInfo) -> list[str] | None:
        fmt = info.data.get("format")
        if fmt == "csv" and not value:
            raise PydanticCustomError(
                "csv_columns", "a list of column names (required when format is csv)"
            )
        if fmt != "csv" and value is not None:
            raise PydanticCustomError("json_columns", "no columns (they apply to format csv only)")
        if value is not None:
            if any(not name for name in value):
                raise PydanticCustomError("csv_columns", "non-empty column names")
            if len(set(value)) != len(value):
                raise PydanticCustomError("csv_columns", "distinct column names")
        return value


class ParseProcessor(Processor[ParseProcessorConfig]):
    """Decodes each message once; undecodable messages become failures."""

    config_class = ParseProcessorConfig
    ordering = "concurrent"  # stateless: batches may overlap

    async def process(self, batch: list[Message]) -> ProcessResult:
        if len(batch) >= _THREAD_MIN:
            return await asyncio.to_thread(self._parse_all, batch)
        return self._parse_all(batch)

    def _parse_all(self, batch: list[Message]) -> ProcessResult:
        if self.config.format == "debezium":
            return decode_changes(batch, self.stage)
        outputs: list[Message] = []
        failures: list[Failure] = []
        decode = self._decoder()
        for msg in batch:
            if msg.record is not NOT_DECODED:
                outputs.append(msg)
                continue
            try:
                outputs.append(msg.derive(record=decode(msg.payload)))
            except DecodeError as exc:
                failures.append(Failure(msg, str(exc), self.stage))
        return outputs, failures

    def _decoder(self) -> Any:
        cfg = self.config
        if cfg.format == "json":
            return decode_json
        columns = list(cfg.columns or ())
        delimiter = cfg.delimiter

        def decode(payload: bytes) -> dict[str, Any]:
            # decode_csv would say "found 0 lines"; an empty payload deserves its own words.
            if not payload.strip():
                raise DecodeError("empty payload (expected one CSV line)")
            return decode_csv(payload, columns, delimiter)

        return decode

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "format": self.config.format}
