"""Live config reload: change detection (symlink swap), rejection, swap, rollback.

A real Pipeline with an in-memory source and real file targets; the config
file on disk is what changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Self

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.pipeline import Pipeline
from unsflow.engine.reload import ConfigWatcher, digest, load_config_file
from unsflow.engine.swap import plan_reload
from unsflow.message import Message
from unsflow.testing import MemorySource


def msg(topic: str, n: int) -> Message:
    return Message(topic, json.dumps({"n": n}).encode(), 1, received_at=time.time(),
                   source_id="memory")


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def config_data(tmp_path: Path, subs: dict, targets: tuple[str, ...] = ("a",), **extra) -> dict:
    data = {
        "targets": {t: {"type": "file", "path": str(tmp_path / f"{t}.jsonl")} for t in targets},
        "subscriptions": {f: {"qos": 1, "target": t} for f, t in subs.items()},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "spool": {"path": str(tmp_path / "spool")},
        "http": {"port": 0},
        "reload": {"interval": 0},
    }
    data.update(extra)
    return data


class Running:
    """A pipeline running in the background with a MemorySource."""

    def __init__(self, config_path: Path) -> None:
        cfg, self.loaded = load_config_file(config_path, env={})
        self.source = MemorySource()
        self.pipeline = Pipeline(cfg, Context(env={}), source=self.source)
        self.watcher = ConfigWatcher(config_path, self.pipeline, self.loaded, env={})
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Self:
        self.task = asyncio.create_task(self.pipeline.run(self.stop))
        await until(lambda: self.pipeline.running)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def metrics_text(pipeline: Pipeline) -> str:
    from prometheus_client import generate_latest

    from unsflow.engine.metrics import pipeline_registry

    return generate_latest(pipeline_registry(pipeline)).decode()


def k8s_configmap(root: Path, name: str, data: dict, version: int) -> Path:
    """Write ``data`` the way the kubelet updates a ConfigMap volume: a new timestamped
    directory, then an atomic swap of the ``..data`` symlink. Returns the file path."""
    version_dir = root / f"..2026_11_23_v{version}"
    version_dir.mkdir()
    (version_dir / name).write_text(json.dumps(data))
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(version_dir.name)
    os.replace(tmp_link, root / "..data")  # rename(2) over the old link: atomic
    path = root / name
    if not path.is_symlink():
        path.symlink_to(f"..data/{name}")
    return path


@pytest.fixture
def cm(tmp_path: Path) -> Path:
    root = tmp_path / "configmap"
    root.mkdir()
    return root


async def test_configmap_symlink_swap_is_detected_and_applied(tmp_path, cm):
    path = k8s_configmap(cm, "pipeline.json", config_data(tmp_path, {"plant/a/#": "a"}), 1)
    stat_before = os.lstat(path)
    async with Running(path) as run:
        assert await run.watcher.check() == "unchanged"
        k8s_configmap(cm, "pipeline.json",
                      config_data(tmp_path, {"plant/a/#": "a", "plant/b/#": "b"}, ("a", "b")), 2)
        # The path itself (a symlink into ..data) did not change: only its content did.
        assert os.lstat(path).st_mtime_ns == stat_before.st_mtime_ns
        assert await run.watcher.check() == "applied"
        assert set(run.pipeline.config.subscriptions) == {"plant/a/#", "plant/b/#"}
        assert run.pipeline.generation == 2
        assert run.pipeline.config_hash == digest(path.read_bytes())
        assert run.pipeline.reloads == {"applied": 1, "rejected": 0, "failed": 0}
        scrape = metrics_text(run.pipeline)
        assert 'unsflow_config_reloads_total{result="applied"} 1.0' in scrape
        assert "unsflow_config_generation 2.0" in scrape
        assert f'unsflow_config_info{{sha256="{digest(path.read_bytes())}"}} 1.0' in scrape
        run.source.push([msg("plant/b/x", 1), msg("plant/a/x", 2)])
        await until(lambda: run.source.acked_batches == 1)
        assert await run.watcher.check() == "unchanged"
    assert [r["n"] for r in lines(tmp_path / "b.jsonl")] == [1]
    assert [r["n"] for r in lines(tmp_path / "a.jsonl")] == [2]


async def test_invalid_config_is_rejected_with_key_paths_and_old_one_keeps_running(
        tmp_path, caplog):
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(config_data(tmp_path, {"plant/#": "a"})))
    async with Running(path) as run:
        bad = config_data(tmp_path, {"plant/#": "nowhere"})
        bad["targets"]["a"]["fsync"] = "sometimes"
        path.write_text(json.dumps(bad))
        with caplog.at_level(logging.ERROR, logger="unsflow.engine.reload"):
            assert await run.watcher.check() == "rejected"
        errors = "\n".join(r.getMessage() for r in caplog.records)
        assert "rejected" in errors and "the running config (generation 1) stays" in errors
        assert "subscriptions.plant/#.target: expected the name of a target" in errors
        assert "'nowhere'" in errors
        assert "targets.a.fsync" in errors
        assert run.pipeline.reloads["rejected"] == 1
        assert run.pipeline.generation == 1
        assert 'unsflow_config_reloads_total{result="rejected"} 1.0' in metrics_text(run.pipeline)
        # Still running the old config: messages flow to target a.
        run.source.push([msg("plant/x", 1)])
        await until(lambda: run.source.acked_batches == 1)
        # The same content is not tried (or logged) again.
        caplog.clear()
        assert await run.watcher.check() == "unchanged"
        assert not caplog.records and run.pipeline.reloads["rejected"] == 1
        # A fixed content is applied.
        path.write_text(json.dumps(config_data(tmp_path, {"plant/#": "a"}, **{"batch-size": 10})))
        assert await run.watcher.check() == "applied"
        assert run.pipeline.config.batch_size == 10
    assert [r["n"] for r in lines(tmp_path / "a.jsonl")] == [1]


async def test_unparseable_and_missing_file_keep_the_running_config(tmp_path, caplog):
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(config_data(tmp_path, {"plant/#": "a"})))
    async with Running(path) as run:
        path.write_text('{"targets": ')
        with caplog.at_level(logging.ERROR, logger="unsflow.engine.reload"):
            assert await run.watcher.check() == "rejected"
        assert "line 1, column 13: expected a value" in caplog.text
        path.unlink()
        assert await run.watcher.check() == "unreadable"
        assert run.pipeline.running and run.pipeline.generation == 1


async def test_valid_change_new_subscription_flows_removed_one_stops(tmp_path):
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(config_data(tmp_path, {"plant/a/#": "a"})))
    async with Running(path) as run:
        run.source.push([msg("plant/a/x", 1), msg("plant/b/x", 2)])
        await until(lambda: run.source.acked_batches == 1)
        assert run.pipeline.unrouted == 1  # plant/b is not subscribed yet
        path.write_text(json.dumps(config_data(tmp_path, {"plant/b/#": "b"}, ("b",))))
        assert await run.watcher.check() == "applied"
        assert set(run.pipeline.paths) == {"b"}
        run.source.push([msg("plant/a/x", 3), msg("plant/b/x", 4)])
        await until(lambda: run.source.acked_batches == 2)
        assert run.pipeline.unrouted == 2  # plant/a is no longer routed
    assert [r["n"] for r in lines(tmp_path / "a.jsonl")] == [1]
    assert [r["n"] for r in lines(tmp_path / "b.jsonl")] == [4]


async def test_in_flight_batches_finish_and_are_acked_before_the_swap(tmp_path):
    from plugins import engine_faults

    engine_faults.state.update(calls=0, fail_first=3)  # the old path retries 3 times
    old = config_data(tmp_path, {"plant/#": "a"},
                      processors={"flaky": {"type": "python",
                                            "function": "plugins.engine_faults:flaky"}})
    old["targets"]["a"]["processors"] = ["flaky"]
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(old))
    async with Running(path) as run:
        for path_ in run.pipeline.paths.values():
            path_.backoff_initial = 0.05
        run.source.push([msg("plant/x", 1)])
        await until(lambda: engine_faults.state["calls"] >= 1)
        assert run.source.acked_batches == 0  # in flight during the reload
        path.write_text(json.dumps(config_data(tmp_path, {"plant/#": "b"}, ("b",))))
        assert await run.watcher.check() == "applied"
        # The old batch finished through the old path (processor included) and was acked.
        assert run.source.acked_batches == 1
        assert lines(tmp_path / "a.jsonl")[0]["checked"] is True
        run.source.push([msg("plant/x", 2)])
        await until(lambda: run.source.acked_batches == 2)
    assert [r["n"] for r in lines(tmp_path / "b.jsonl")] == [2]


async def test_a_target_that_cannot_start_rolls_back_to_the_old_config(tmp_path, caplog):
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(config_data(tmp_path, {"plant/#": "a"})))
    (tmp_path / "blocker").write_text("a file where a directory should be")
    async with Running(path) as run:
        bad = config_data(tmp_path, {"plant/#": ["a", "c"]}, ("a",))
        bad["targets"]["a"]["fsync"] = False  # a changed: stopped, then started again
        bad["targets"]["c"] = {"type": "file", "path": str(tmp_path / "blocker" / "c.jsonl")}
        path.write_text(json.dumps(bad))
        with caplog.at_level(logging.ERROR):
            assert await run.watcher.check() == "failed"
        assert "the new config could not start" in caplog.text and "blocker" in caplog.text
        assert run.pipeline.reloads == {"applied": 0, "rejected": 0, "failed": 1}
        assert run.pipeline.generation == 1 and set(run.pipeline.paths) == {"a"}
        assert run.pipeline.paths["a"].target.config.fsync is True  # the old one, again
        assert await run.watcher.check() == "unchanged"  # not retried until it changes...
        run.source.push([msg("plant/x", 1)])
        await until(lambda: run.source.acked_batches == 1)
        run.watcher.trigger()  # ...or SIGHUP asks again
        assert await run.watcher.check(forced=True) == "failed"
    assert [r["n"] for r in lines(tmp_path / "a.jsonl")] == [1]


def test_plan_keeps_the_uns_connection_unless_broker_settings_change(tmp_path):
    from unsflow.engine.pipeline import build_uns_source

    base = config_data(tmp_path, {"plant/a/#": "a", "plant/b/#": "a"})
    old = parse_config(base, env={})
    uns = build_uns_source(old, Context(env={}))
    subs = {"plant/a/#": {"qos": 2, "target": "a"}, "plant/c/#": {"qos": 1, "target": "a"}}
    new = parse_config({**base, "subscriptions": subs}, env={})
    plan = plan_reload(old, new, uns)
    assert (plan.uns, plan.subscriptions_added, plan.subscriptions_removed,
            plan.subscriptions_qos) == ("kept", ["plant/c/#"], ["plant/b/#"], ["plant/a/#"])
    assert plan.describe().startswith("subscriptions +plant/c/# -plant/b/# ~plant/a/# (qos)")
    moved = parse_config({**base, "mqtt-broker": {"host": "elsewhere"}}, env={})
    assert plan_reload(old, moved, uns).uns == "replaced"
    cred = parse_config({**base, "mqtt-broker-credential": {"secret-name": "uns"}}, env={})
    assert plan_reload(old, cred, uns).uns == "replaced"
    same = plan_reload(old, parse_config(base, env={}), uns)
    assert not same.changed and same.describe() == "nothing"
    spool = plan_reload(old, parse_config({**base, "spool": {"max-bytes": 10**6}}, env={}), uns)
    assert spool.targets["replaced"] == ["a"] and "spool" in spool.settings


@pytest.fixture(autouse=True)
def _plugins_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))


async def test_dead_letter_moves_with_the_config_and_its_count_goes_on(tmp_path):
    path = tmp_path / "pipeline.json"
    v1 = config_data(tmp_path, {"plant/#": "a"}, ("a", "dl"))
    v1["dead-letter"] = {"path": str(tmp_path / "dead1.jsonl"), "target": "dl"}
    path.write_text(json.dumps(v1))
    bad = Message("plant/x", b"\xff", 1, received_at=time.time(), source_id="memory")
    async with Running(path) as run:
        run.source.push([bad])
        await until(lambda: run.source.acked_batches == 1)
        v2 = config_data(tmp_path, {"plant/#": "a"})
        v2["dead-letter"] = {"path": str(tmp_path / "dead2.jsonl")}
        path.write_text(json.dumps(v2))
        assert await run.watcher.check() == "applied"
        assert run.pipeline.dead_letter.target is None
        run.source.push([bad])
        await until(lambda: run.source.acked_batches == 2)
        assert run.pipeline.dead_letter.count == 2
    assert len(lines(tmp_path / "dl.jsonl")) == 1  # the dead-letter target of v1
    assert [d["stage"] for d in lines(tmp_path / "dead2.jsonl")] == ["target:a"]
    assert not (tmp_path / "dead1.jsonl").exists()


async def test_http_endpoints_move_with_the_config(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(config_data(tmp_path, {"plant/#": "a"})))
    async with Running(path) as run:
        assert run.pipeline.http is None  # port 0: off
        path.write_text(json.dumps(config_data(tmp_path, {"plant/#": "a"},
                                               http={"host": "127.0.0.1", "port": port})))
        assert await run.watcher.check() == "applied"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = (await reader.read()).decode()
        writer.close()
    assert answer.startswith("HTTP/1.1 200") and "unsflow_config_generation 2.0" in answer


async def test_an_added_target_drains_its_spool_and_a_replaced_one_reopens_it(tmp_path):
    from unsflow.engine.spool import Spool

    leftover = Spool(tmp_path / "spool", "b", max_bytes=10**6, max_age=None)
    leftover.open()
    await leftover.append([msg("plant/b/x", n) for n in (7, 8)])
    leftover.close()
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(config_data(tmp_path, {"plant/a/#": "a"})))
    async with Running(path) as run:
        v2 = config_data(tmp_path, {"plant/a/#": "a", "plant/b/#": "b"}, ("a", "b"))
        v2["targets"]["a"]["fsync"] = False  # a is replaced: its spool closed, then reopened
        path.write_text(json.dumps(v2))
        assert await run.watcher.check() == "applied"
        assert run.pipeline.paths["a"].spool is not None
        await until(lambda: len(lines(tmp_path / "b.jsonl")) == 2)
        run.source.push([msg("plant/a/x", 1), msg("plant/b/x", 9)])
        await until(lambda: run.source.acked_batches == 1)
        # Acknowledged may mean spooled (the drained file can still be there when 9
        # arrives, so 9 queues behind it): wait for the target itself.
        await until(lambda: len(lines(tmp_path / "b.jsonl")) >= 3)
    assert [r["n"] for r in lines(tmp_path / "b.jsonl")] == [7, 8, 9]
    assert [r["n"] for r in lines(tmp_path / "a.jsonl")] == [1]
