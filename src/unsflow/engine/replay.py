"""Dead-letter replay: stored messages go back to the UNS broker, and so through the pipeline.

Reads the JSON lines of :mod:`unsflow.engine.deadletter` (``payload`` as text,
or ``payload_base64``, with ``topic`` and ``qos``) and publishes each payload,
byte for byte, to its topic (or under ``topic_prefix``) on the broker of the
config, waiting for every acknowledgement. QoS 0 messages are published at
QoS 1, so that the broker acknowledges them too.

- A line that cannot be parsed, or that came from a source other than the UNS
  broker (a Kafka source's topic is not an MQTT topic), is reported with its
  line number and skipped; the rest are still published.
- Unless ``keep``, the file is first renamed to ``FILE.replaying-<time>``
  (a running pipeline then appends new failures to a new FILE, so none is
  missed or replayed twice), and after every message was acknowledged to
  ``FILE.replayed-<time>``, so that the same replay is not repeated by
  accident. When publishing fails, ``FILE.replaying-<time>`` stays: replay it.
- Messages that fail again in the pipeline land in the dead letter again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from unsflow.components import Context
from unsflow.config.models import PipelineConfig
from unsflow.engine.topics import topic_problem
from unsflow.errors import UnsflowError

__all__ = ["DeadLetterEntry", "ReplayReport", "read_dead_letter", "replay"]

UNS_SOURCE_IDS = ("", "uns")


@dataclass(frozen=True)
class DeadLetterEntry:
    line: int
    topic: str
    payload: bytes
    qos: int


@dataclass
class ReplayReport:
    path: Path
    entries: int = 0
    published: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)
    renamed_to: Path | None = None


def read_dead_letter(path: Path, topic_prefix: str | None = None
                     ) -> tuple[list[DeadLetterEntry], list[tuple[int, str]]]:
    """The replayable entries of ``path``, and ``(line number, why)`` for each line skipped."""
    entries: list[DeadLetterEntry] = []
    skipped: list[tuple[int, str]] = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                entries.append(_entry(number, raw, topic_prefix))
            except ValueError as exc:
                skipped.append((number, str(exc)))
    return entries, skipped


def _entry(number: int, raw: bytes, topic_prefix: str | None) -> DeadLetterEntry:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    source = data.get("source") or ""
    if source not in UNS_SOURCE_IDS:
        raise ValueError(f"from source {source!r}, not the UNS broker: not replayed")
    topic = data.get("topic")
    if not isinstance(topic, str):
        raise ValueError("no 'topic' string")
    if topic_prefix:
        topic = f"{topic_prefix.rstrip('/')}/{topic}"
    problem = topic_problem(topic)
    if problem:
        raise ValueError(f"topic {topic!r}: expected {problem}")
    if isinstance(data.get("payload"), str):
        payload = data["payload"].encode("utf-8")
    elif isinstance(data.get("payload_base64"), str):
        try:
            payload = base64.b64decode(data["payload_base64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"payload_base64 is not base64 ({exc})") from None
    else:
        raise ValueError("neither 'payload' nor 'payload_base64'")
    qos = data.get("qos", 1)
    if qos not in (0, 1, 2):
        raise ValueError(f"qos: expected 0, 1 or 2, found {qos!r}")
    return DeadLetterEntry(number, topic, payload, qos)


def replay(path: str | os.PathLike[str], config: PipelineConfig, *,
           topic_prefix: str | None = None, dry_run: bool = False, keep: bool = False,
           timeout: float = 120.0, context: Context | None = None) -> ReplayReport:
    """Publish the entries of dead-letter file ``path`` to the UNS broker of ``config``.

    Raises ``FileNotFoundError`` when ``path`` does not exist, and
    :class:`UnsflowError` naming the file to replay again when the broker
    cannot take the messages (unreachable, login refused, acks too slow).
    """
    source = Path(path)
    report = ReplayReport(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such dead-letter file")
    work = source
    if not (dry_run or keep):
        stamp = _stamp(source)
        work = source.with_name(f"{source.name}.replaying-{stamp}")
        os.replace(source, work)
        report.renamed_to = work
    entries, report.skipped = read_dead_letter(work, topic_prefix)
    report.entries = len(entries)
    if dry_run or not entries:
        report.published = 0
    else:
        try:
            report.published = _publish(entries, config, context or Context(), timeout)
        except (OSError, TimeoutError, UnsflowError) as exc:
            raise UnsflowError(f"replay of {work} failed: {exc}; its messages are still in "
                               f"{work} (replay that file)") from exc
    if report.renamed_to is not None:
        done = work.with_name(work.name.replace(".replaying-", ".replayed-"))
        os.replace(work, done)
        report.renamed_to = done
    return report


def _stamp(source: Path) -> str:
    """A UTC time stamp naming neither an existing .replaying- nor .replayed- file."""
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    stamp, n = base, 0
    while any(source.with_name(f"{source.name}.{kind}-{stamp}").exists()
              for kind in ("replaying", "replayed")):
        n += 1
        stamp = f"{base}-{n}"
    return stamp


def _publish(entries: list[DeadLetterEntry], config: PipelineConfig, context: Context,
             timeout: float) -> int:
    from unsflow._paho import publish

    broker = config.mqtt_broker
    username = password = None
    if config.mqtt_broker_credential is not None:
        cred = asyncio.run(context.resolve_secret(config.mqtt_broker_credential))
        username, password = cred.username, cred.password
    tls = broker.tls
    # Without a CA file of its own, TLS verifies against the system's CAs.
    system_ca = ssl.get_default_verify_paths().openssl_cafile
    options = {
        "username": username, "password": password,
        "tls_ca": (tls.ca_file or system_ca) if tls else None,
        "tls_cert": tls.cert_file if tls else None, "tls_key": tls.key_file if tls else None,
        "protocol": 5 if broker.protocol_version == "5" else 4,
    }
    published = 0
    deadline = time.monotonic() + timeout
    # In file order, one connection per run of equal QoS (publish takes one QoS per call).
    start = 0
    while start < len(entries):
        qos = max(entries[start].qos, 1)
        end = start
        while end < len(entries) and max(entries[end].qos, 1) == qos:
            end += 1
        published += publish(
            broker.host or "localhost", broker.port or 1883,
            [(e.topic, e.payload) for e in entries[start:end]], qos,
            timeout=max(deadline - time.monotonic(), 1.0), **options)  # type: ignore[arg-type]
        start = end
    return published
