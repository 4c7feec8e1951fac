"""object-names: deterministic names depend only on the messages an object holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from unsflow.components import Context
from unsflow.errors import ConfigError
from unsflow.lake import content_digest
from unsflow.message import Message
from unsflow.targets.object_store import ObjectStoreTarget

T0 = 1767268800.5  # 2026-01-01T12:00:00.500Z


def m(seq: int, at: float = T0, topic: str = "a/b",
      headers: dict[str, Any] | None = None) -> Message:
    return Message(topic, b'{"seq": %d}' % seq, received_at=at, headers=headers)


def digest(*messages: Message) -> str:
    return content_digest([(msg, None) for msg in messages])


def kafka(offset: int) -> dict[str, Any]:
    return {"kafka.topic": "uns", "kafka.partition": 3, "kafka.offset": offset}


def test_same_messages_same_digest_in_any_order() -> None:
    a, b = m(1), m(2)
    assert digest(a, b) == digest(b, a) == digest(m(1), m(2))
    assert len(digest(a, b)) == 32 and int(digest(a, b), 16) >= 0


def test_topic_payload_and_receive_time_each_count() -> None:
    base = digest(m(1))
    assert digest(m(2)) != base
    assert digest(m(1, topic="a/c")) != base
    # An equal reading received later is another message: it must not overwrite the first.
    assert digest(m(1, at=T0 + 1)) != base
    # A message twice is not the same object as the message once.
    assert digest(m(1), m(1)) != base


def test_kafka_records_are_identified_by_their_coordinates_not_receive_time() -> None:
    assert digest(m(1, headers=kafka(7))) == digest(m(1, at=T0 + 3600, headers=kafka(7)))
    assert digest(m(1, headers=kafka(7))) != digest(m(1, headers=kafka(8)))
    # Incomplete coordinates are not a Kafka identity.
    assert digest(m(1, headers={"kafka.offset": 7})) != digest(m(1, at=T0 + 1, headers={"kafka.offset": 7}))


def test_field_boundaries_are_unambiguous() -> None:
    assert digest(Message("ab", b"c", received_at=T0)) != digest(Message("a", b"bc", received_at=T0))


def lake_target(root: Path, **keys: Any) -> ObjectStoreTarget:
    config = {"type": "s3", "local-path": str(root), "batching": {"max-age": 0.05}} | keys
    return ObjectStoreTarget("lake", ObjectStoreTarget.config_class.model_validate(config),
                             Context(env={}))


async def write(root: Path, batch: list[Message], **keys: Any) -> None:
    target = lake_target(root, **keys)
    await target.start()
    try:
        assert await target.write(batch) == []
    finally:
        await target.stop()


def parquet_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


async def test_local_replay_overwrites_with_deterministic_names(tmp_path: Path) -> None:
    batch = [m(i) for i in range(3)]
    await write(tmp_path, batch, **{"object-names": "deterministic"})
    await write(tmp_path, batch, **{"object-names": "deterministic"})
    [name] = parquet_files(tmp_path)
    assert name == f"date=2026-01-01/hour=12/part-{digest(*batch)}.parquet"
    await write(tmp_path, batch)  # default: unique names
    assert len(parquet_files(tmp_path)) == 2


@pytest.mark.parametrize("keys, found", [
    ({"object-names": "random"}, "object-names"),
    ({"multipart-chunk-size": 1024}, "multipart-chunk-size"),
    ({"credential": {"secret-name": "x"}}, "credential applies to S3, GCS and Azure"),
])
def test_new_keys_are_validated(tmp_path: Path, keys: dict[str, Any], found: str) -> None:
    from unsflow.config.loading import parse_config

    config = {"targets": {"lake": {"type": "s3", "local-path": str(tmp_path)} | keys},
              "subscriptions": {"a/#": {"target": "lake"}}}
    with pytest.raises(ConfigError, match=found):
        parse_config(config)
