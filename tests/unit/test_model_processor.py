"""model: in-process ONNX inference with a model trained by `unsflow train`, batched, hot swap."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.ml_data import MACHINE, MANUELA_CSV, manuela_lake, manuela_rows
from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.errors import PermanentError
from unsflow.message import Message
from unsflow.ml.store import ModelStore, default_metadata
from unsflow.ml.train import TrainOptions, train
from unsflow.processors.model import ModelProcessor, ModelProcessorConfig
from unsflow.processors.window import WindowProcessor, WindowProcessorConfig


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ml")
    result = train(TrainOptions(lake=str(manuela_lake(root / "lake")), store=str(root / "store"),
                                name="vib", ground_truth=(str(MANUELA_CSV),),
                                candidates=("random-forest",)))
    assert result.version == 1
    return root / "store"


def processor(store: Path, **config: Any) -> ModelProcessor:
    cfg = ModelProcessorConfig.model_validate({"type": "model", "store": str(store),
                                               "model": "vib", **config})
    return ModelProcessor("anomaly", cfg, Context(env={}))


def csv_message(row: dict[str, str]) -> Message:
    record = {"machineId": MACHINE, "deviceId": row["id"], "value": float(row["value"]),
              "epochMillis": int(row["ts"])}
    return Message(topic="iot-sensor/sw/vibration", payload=b"", record=record)


async def test_window_then_model_flags_the_recorded_anomalies(trained_store: Path) -> None:
    rows = manuela_rows()
    window = WindowProcessor("win", WindowProcessorConfig.model_validate(
        {"type": "window", "size": 5, "key-fields": ["machineId", "deviceId"],
         "time-field": "epochMillis"}), Context(env={}))
    windows, failures = await window.process([csv_message(r) for r in rows])
    assert failures == [] and len(windows) == len(rows) - 2 * 4
    p = processor(trained_store)
    await p.start()
    try:
        outputs, failures = await p.process(windows)
    finally:
        await p.stop()
    assert failures == [] and len(outputs) == len(windows)
    first = outputs[0].record
    assert set(first) == {"machineId", "deviceId", "value", "epochMillis", "window", "inference"}
    assert isinstance(first["inference"], int)
    labels = {(r["id"], int(r["ts"])): int(r["label"]) for r in rows}
    truth = [labels[(o.record["deviceId"], o.record["epochMillis"])] for o in outputs]
    flagged = [o.record["inference"] for o in outputs]
    hits = sum(1 for t, f in zip(truth, flagged, strict=True) if t == f == 1)
    wrong = sum(1 for t, f in zip(truth, flagged, strict=True) if t != f)
    assert sum(truth) == 84 and hits >= 80 and wrong <= 4, (hits, wrong)
    assert p.describe()["calls"] == 3  # 3014 rows in calls of at most 1024, not one per message


async def test_bad_input_fails_that_message_with_a_reason(trained_store: Path) -> None:
    p = processor(trained_store, output="all")
    await p.start()
    good = Message(topic="t", payload=b"", record={"window": [10, 11, 12, 13, 40.5]})
    batch = [
        Message(topic="t", payload=b"", record={"window": [1, 2, 3]}),
        Message(topic="t", payload=b"", record={"window": [1, 2, "x", 4, 5]}),
        Message(topic="t", payload=b"", record={"values": [1, 2, 3, 4, 5]}),
        Message(topic="t", payload=b"{not json"),
        good,
        Message(topic="t", payload=b'{"window": [14, 15, 14, 13, 14]}'),
        Message(topic="t", payload=b"", record={"window": [1, 2, float("nan"), 4, 5]}),
        Message(topic="t", payload=b"", record={"window": [1, 2, 1e300, 4, True]}),
        Message(topic="t", payload=b"", record={"window": [1, 2, 1e300, 4, 5]}),
    ]
    outputs, failures = await p.process(batch)
    await p.stop()
    reasons = [f.error for f in failures]
    assert reasons[0] == "input field 'window' holds 3 value(s); the model expects 5"
    assert reasons[1] == ("input field 'window' must hold a number or a list of numbers, "
                          "found [1, 2, 'x', 4, 5]")
    assert reasons[2] == "record has no input field 'window'"
    assert "JSON" in reasons[3]
    assert reasons[4:] == [
        "input field 'window' must hold finite numbers, found [1, 2, nan, 4, 5]",
        "input field 'window' must hold a number or a list of numbers, found "
        "[1, 2, 1e+300, 4, True]",
        "input field 'window' must hold finite numbers, found [1, 2, 1e+300, 4, 5]"]
    assert len(failures) == 7
    assert all(f.stage == "processor:anomaly" for f in failures)
    spike, calm = (o.record["inference"] for o in outputs)
    assert spike["label"] == 1 and spike["probabilities"][1] > 0.5
    assert calm["label"] == 0 and (spike["model"], spike["version"]) == ("vib", 1)


async def test_probability_output(trained_store: Path) -> None:
    p = processor(trained_store, output="probability", **{"output-field": "p"})
    await p.start()
    outputs, _ = await p.process([Message(topic="t", payload=b"",
                                          record={"window": [10, 11, 12, 13, 40.5]})])
    await p.stop()
    assert 0.5 < outputs[0].record["p"] <= 1.0


async def test_new_version_is_picked_up_and_a_corrupt_one_skipped(trained_store: Path,
                                                                  tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    shutil.copytree(trained_store, store_dir)
    store = ModelStore(str(store_dir))
    v1 = store.read("vib", 1)
    p = processor(store_dir, **{"poll-interval": 0.05})
    await p.start()
    try:
        assert p.model_version == 1
        store.save("vib", v1.model, {**v1.metadata, "training": {"copy": True}})
        for _ in range(200):  # the poller, not the test, loads version 2
            if p.model_version == 2:
                break
            await asyncio.sleep(0.05)
        assert p.model_version == 2 and p.describe()["swaps"] == 1
        store.save("vib", b"garbage", default_metadata(5))
        assert await p.check_for_update() is False
        assert p.model_version == 2  # version 3 cannot be loaded: 2 stays
        outputs, failures = await p.process([Message(topic="t", payload=b"",
                                                      record={"window": [1, 2, 3, 4, 5]})])
        assert failures == [] and outputs[0].record["inference"] == 0
    finally:
        await p.stop()


async def test_pinned_version_and_missing_model(trained_store: Path, tmp_path: Path) -> None:
    p = processor(trained_store, version=1)
    await p.start()
    assert p.model_version == 1 and p._poller is None
    await p.stop()
    with pytest.raises(PermanentError, match=r"\[anomaly\] model store .* has no complete "
                                             r"version of model 'nope'"):
        await ModelProcessor("anomaly", ModelProcessorConfig.model_validate(
            {"type": "model", "store": str(tmp_path), "model": "nope"}), Context(env={})).start()
    with pytest.raises(PermanentError, match=r"model 'vib' version 9: no such complete version"):
        await processor(trained_store, version=9).start()


def test_config_in_a_pipeline() -> None:
    cfg = parse_config({
        "targets": {"alerts": {"type": "mqtt", "mqtt-broker-host": "localhost",
                               "processors": ["csv", "win", "anomaly"]}},
        "processors": {
            "csv": {"type": "parse", "format": "csv",
                    "columns": ["machineId", "deviceId", "value", "epochMillis"]},
            "win": {"type": "window", "key-fields": ["machineId", "deviceId"],
                    "time-field": "epochMillis"},
            "anomaly": {"type": "model", "store": "s3://models/edge", "model": "vibration-anomaly",
                        "store-options": {"endpoint": "http://minio:9000"}, "batch-size": 64}},
        "subscriptions": {"iot-sensor/sw/vibration": {"qos": 1, "target": "alerts"}}})
    anomaly = cfg.processors["anomaly"]
    assert anomaly.batch_size == 64 and anomaly.input_field == "window"
