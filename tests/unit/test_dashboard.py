"""The dashboard's logic without a browser or a broker: parsing, bounds, redaction, config
derivation, the lake listing, the pipeline view, access control, offline assets."""

from __future__ import annotations

import doctest
import importlib
import json
import re
import time
from pathlib import Path

import pytest

from unsflow.config.loading import parse_config
from unsflow.dashboard.config import DashboardConfig, alert_filter, from_pipelines
from unsflow.dashboard.pipeline import PipelineWatch, parse_metrics
from unsflow.dashboard.redact import MASK, Scrubber, redact
from unsflow.dashboard.uns import MAX_PENDING, UnsView, parse_alert, parse_reading
from unsflow.errors import DashboardError, UnsflowError

STATIC = Path(__file__).resolve().parents[2] / "src" / "unsflow" / "dashboard" / "static"


@pytest.mark.parametrize("name", ["unsflow.dashboard.uns", "unsflow.dashboard.redact",
                                  "unsflow.dashboard.config", "unsflow.dashboard.hub",
                                  "unsflow.dashboard.lake", "unsflow.dashboard.pipeline",
                                  "unsflow.dashboard.command"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


# --- readings and alerts ---------------------------------------------------------


def test_readings_from_uns_json_csv_and_bare_numbers():
    r = parse_reading("t/acme/plant1/area1/line2/press-9/temperature",
                      b'{"value": 51.5, "unit": "\xc2\xb0C", "timestamp": 1700000000123}', 5.0)
    assert (r.group, r.machine, r.sensor, r.value, r.unit) == \
        ("t/acme/plant1/area1/line2", "press-9", "temperature", 51.5, "°C")
    assert r.ts == pytest.approx(1700000000.123)
    csv = parse_reading("x/iot-sensor/sw/vibration", b"floor-1-line-1-extruder-1,pump-2,13.8,"
                        b"1587640442999\n", 5.0)
    assert (csv.group, csv.machine, csv.device, csv.sensor, csv.value) == \
        ("x/iot-sensor/sw", "floor-1-line-1-extruder-1", "pump-2", "vibration", 13.8)
    bare = parse_reading("plant/line/m1/speed", b"42", 7.0)
    assert (bare.machine, bare.sensor, bare.value, bare.ts) == ("m1", "speed", 42.0, 7.0)
    # Not a reading: text, a state string, a JSON object without a numeric value, NaN.
    for payload in (b"RUNNING", b'"RUNNING"', b'{"state": "idle"}', b'{"value": "n/a"}',
                    b"\xff\xfe", b'{"value": NaN}'):
        assert parse_reading("a/b/c", payload, 0.0) is None, payload


def test_alerts_of_threshold_and_model_paths():
    threshold = parse_alert("al/m1/temperature", json.dumps({
        "alert": "temperature above 54.5", "limit": 54.5, "value": 55.0,
        "reading": {"machine": "m1", "sensor": "temperature", "timestamp": 1700000000000},
        "topic": "acme/plant1/area1/line1/m1/temperature"}).encode(), 0.0)
    assert (threshold.kind, threshold.machine, threshold.sensor, threshold.limit,
            threshold.text) == ("threshold", "m1", "temperature", 54.5, "temperature above 54.5")
    remote = parse_alert("al/m2/vibration", b'{"value": 40, "machine": "m2", "anomaly": 1}', 9.0)
    assert (remote.kind, remote.sensor, remote.version, remote.ts) == \
        ("anomaly", "vibration", None, 9.0)
    assert parse_alert("al/x/y", b"not json", 0.0) is None


def test_a_burst_is_bounded_and_decimated_per_topic():
    clock = [100.0]
    view = UnsView(alert_filters=["al/#"], points_per_second=10, history=50, max_topics=3,
                   clock=lambda: clock[0])
    payload = b'{"value": 12.5, "timestamp": 1700000000000}'
    for _ in range(10_000):
        view.ingest("acme/p/a/l/m1/vibration", payload, False)
    clock[0] += 1.0
    changes = view.tick()
    assert len(changes["points"]["acme/p/a/l|m1|vibration"]) == MAX_PENDING  # the allowance
    for _ in range(10_000):  # a second later: the bucket refilled by 10
        view.ingest("acme/p/a/l/m1/vibration", payload, False)
    clock[0] += 1.0
    kept = len(view.tick()["points"]["acme/p/a/l|m1|vibration"])
    assert kept == 10
    assert len(view.series["acme/p/a/l|m1|vibration"].points) == 50  # history bound
    # Topics beyond max_topics are counted, not kept.
    for i in range(5):
        view.ingest(f"other/{i}", b"1", True)
    assert len(view.topics) == 3 and view.untracked == 3
    assert view.messages == 20_005


def test_a_short_burst_is_charted_whole_however_it_falls_between_ticks():
    """25 readings arriving across a tick boundary all become points (the chart test in the
    browser failed when a burst straddled two ticks and the second part was decimated)."""
    clock = [0.0]
    view = UnsView(points_per_second=2, clock=lambda: clock[0])
    topic = "acme/p/a/l/m1/vibration"
    payloads = [json.dumps({"value": i, "timestamp": 1700000000000 + i}).encode()
                for i in range(25)]
    for p in payloads[:15]:
        view.ingest(topic, p, False)
    clock[0] += 0.25
    first = view.tick()["points"]["acme/p/a/l|m1|vibration"]
    for p in payloads[15:]:
        view.ingest(topic, p, False)
    clock[0] += 0.25
    second = view.tick()["points"]["acme/p/a/l|m1|vibration"]
    assert [v for _, v in first + second] == list(range(25))
    # A sustained rate far above the budget: about points_per_second kept, evenly in time.
    kept = 0
    for _ in range(200):  # 20 s of batches of 50 every 0.1 s (500 msg/s)
        clock[0] += 0.1
        view.ingest_batch(_Msg(topic, payloads[0]) for _ in range(50))
        kept += len(view.tick()["points"].get("acme/p/a/l|m1|vibration", []))
    assert 40 <= kept <= 40 + MAX_PENDING  # 2 a second for 20 s, plus what was left to spend


class _Msg:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload, self.retain = topic, payload, False


def test_alerts_are_never_decimated_and_the_list_is_bounded():
    view = UnsView(alert_filters=["al/+/+"], points_per_second=1)
    for i in range(30):
        view.ingest("al/m1/vibration", json.dumps({"value": i, "machine": "m1",
                                                   "inference": {"label": 1, "version": 2,
                                                                 "model": "m"}}).encode(), False)
    changes = view.tick()
    assert [a["value"] for a in changes["alerts"]] == list(range(30))
    assert changes["alerts"][0]["version"] == 2 and view.alerts_total == 30
    assert "al/m1/vibration" in changes["topics"] and not changes["points"]
    rows = view.topic_rows(text="AL/M1")
    assert rows[0]["alert"] and rows[0]["count"] == 30


# --- secrets ---------------------------------------------------------------------


def test_redaction_masks_values_keeps_references_and_scrubs_text():
    scrubber = Scrubber()
    config = {
        "mqtt-broker-credential": {"secret-name": "uns-login", "secret-region": "eu-west-1"},
        "processors": {"score": {"type": "remote", "base-url": "https://svc/api",
                                 "headers": {"Authorization": "Bearer inline-tok-123",
                                             "X-Trace": "trace-abc"}}},
        "targets": {"k": {"type": "kafka", "producer-config": {"sasl.password": "kpass-456"},
                          "key-prefix": "plant"},
                    "m": {"type": "mqtt", "mqtt-broker-host": "mqtt://bob:url-pass-789@broker"},
                    "s": {"type": "s3", "secret-access-key": "AKIAxyz", "api_key": 12345678}},
    }
    shown = json.dumps(redact(config, scrubber), ensure_ascii=False)
    for secret in ("inline-tok-123", "trace-abc", "kpass-456", "url-pass-789", "AKIAxyz",
                   "12345678"):
        assert secret not in shown
    assert "uns-login" in shown and "eu-west-1" in shown and '"plant"' in shown
    assert shown.count(MASK) == 6
    assert scrubber.scrub("found 'Bearer inline-tok-123' and kpass-456 at "
                          "mqtt://bob:url-pass-789@broker") == \
        f"found '{MASK}' and {MASK} at mqtt://bob:{MASK}@broker"
    assert scrubber.scrub("port: 'inline-tok-123'") == f"port: '{MASK}'"


# --- what the dashboard reads off a pipeline config ----------------------------------


def test_dashboard_config_from_a_pipeline_config(tmp_path):
    data = {
        "mqtt-broker": {"host": "broker.plant", "port": 1884},
        "subscriptions": {"$share/lake/acme/#": {"qos": 1, "target": ["lake", "alerts"]}},
        "processors": {"w": {"type": "window", "size": 5},
                       "only": {"type": "filter", "field": "anomaly", "equals": 1},
                       "hot": {"type": "threshold", "match": {"sensor": "temperature"},
                               "above": 70, "below": 5}},
        "targets": {"lake": {"type": "s3", "local-path": str(tmp_path / "lake"),
                             "key-prefix": "uns"},
                    "alerts": {"type": "mqtt", "topic": "acme/alerts/{record[machine]}",
                               "processors": ["w", "only"]},
                    "hot": {"type": "mqtt", "topic": "{topic}/hot", "processors": ["hot"]}},
        "http": {"host": "0.0.0.0", "port": 9999},
    }
    cfg = from_pipelines([str(tmp_path / "p.json")], [parse_config(data, env={})])
    assert (cfg.broker_host, cfg.broker_port) == ("broker.plant", 1884)
    assert cfg.subscribe == ["acme/#"]  # never the share group
    assert cfg.alerts == ["acme/alerts/+", "#"]
    assert cfg.limits == {"temperature": (70, 5)}
    assert cfg.lakes == [str((tmp_path / "lake" / "uns").resolve())]
    assert cfg.pipelines[0].metrics_url == "http://127.0.0.1:9999/metrics"
    assert cfg.pipelines[0].targets["alerts"]["processors"] == ["w", "only"]
    assert alert_filter("a/{levels[1]}-x/b") == "a/+/b"


def test_listening_beyond_loopback_needs_a_token():
    from unsflow.dashboard import check_access

    check_access(DashboardConfig(host="127.0.0.1"))
    with pytest.raises(UnsflowError, match="--token or UNSFLOW_DASHBOARD_TOKEN"):
        check_access(DashboardConfig(host="0.0.0.0"))
    check_access(DashboardConfig(host="0.0.0.0", token="a" * 20))
    with pytest.raises(UnsflowError, match="16 to 256 characters"):
        check_access(DashboardConfig(host="0.0.0.0", token="short"))


# --- the lake --------------------------------------------------------------------


def _write_lake(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for hour, n in (("10", 3), ("11", 5)):
        d = root / "date=2026-01-02" / f"hour={hour}"
        d.mkdir(parents=True)
        pq.write_table(pa.table({"machine": [f"m{i}" for i in range(n)],
                                 "value": [float(i) for i in range(n)]}), d / "part-a.parquet")
    (root / "date=2026-01-02" / "hour=11" / ".part-b.parquet.tmp").write_bytes(b"staging")
    (root / "date=2026-01-02" / "hour=11" / ".part-b.parquet.tmp#1").write_bytes(b"staging")


def test_lake_listing_and_previews(tmp_path):
    from unsflow.dashboard.lake import Lake

    root = tmp_path / "lake"
    _write_lake(root)
    lake = Lake(str(root))
    listing = lake.listing()
    assert listing["objects"] == 2 and listing["rows"] == 8
    assert [(p["partition"], p["rows"]) for p in listing["partitions"]] == \
        [("date=2026-01-02/hour=11", 5), ("date=2026-01-02/hour=10", 3)]
    one = lake.preview("date=2026-01-02/hour=11/part-a.parquet", limit=2)
    assert one["kind"] == "object" and one["total_rows"] == 5
    assert one["rows"] == [{"machine": "m0", "value": 0.0}, {"machine": "m1", "value": 1.0}]
    assert one["query"].startswith(f"SELECT * FROM read_parquet('{root}/date=2026-01-02/hour=11/")
    part = lake.preview("date=2026-01-02")
    assert part["kind"] == "partition" and part["total_rows"] == 8
    assert {"machine", "value", "hour"} <= set(part["columns"])
    # The DuckDB query reads what the preview showed.
    import duckdb

    count = duckdb.sql(part["query"].replace("SELECT *", "SELECT count(*)")
                       .replace(" LIMIT 50;", "")).fetchall()[0][0]
    assert count == 8
    with pytest.raises(DashboardError, match="outside the lake") as outside:
        lake.preview("../../etc")
    assert outside.value.status == 400
    with pytest.raises(DashboardError, match="no such object") as missing:
        lake.preview("date=2031-01-01")
    assert missing.value.status == 404


# --- the Pipeline page's view -------------------------------------------------------

METRICS = """\
# TYPE unsflow_target_received_total counter
unsflow_target_received_total{{target="lake"}} {received}
unsflow_target_received_total{{target="mirror"}} {received}
# TYPE unsflow_target_accepted_total counter
unsflow_target_accepted_total{{target="lake"}} {received}
unsflow_target_accepted_total{{target="mirror"}} 10.0
# TYPE unsflow_target_retries_total counter
unsflow_target_retries_total{{target="lake"}} 0.0
unsflow_target_retries_total{{target="mirror"}} {retries}
# TYPE unsflow_spool_batches gauge
unsflow_spool_batches{{target="lake"}} 0.0
unsflow_spool_batches{{target="mirror"}} {spooled}
# TYPE unsflow_config_generation gauge
unsflow_config_generation {generation}
# TYPE unsflow_config_info gauge
unsflow_config_info{{sha256="{sha}"}} 1.0
"""


def test_pipeline_view_marks_a_failing_target_down_and_follows_reloads(tmp_path):
    import hashlib

    from unsflow.dashboard.config import PipelineSource

    path = tmp_path / "p.json"
    good = {"subscriptions": {"a/#": {"qos": 1, "target": "lake"}},
            "targets": {"lake": {"type": "file", "path": str(tmp_path / "out.jsonl")},
                        "mirror": {"type": "mqtt", "mqtt-credential": {"secret-name": "x"}}},
            "processors": {"score": {"type": "remote", "base-url": "http://svc",
                                     "processor-id": "m",
                                     "headers": {"Authorization": "Bearer tok-secret-1"}}}}
    path.write_text(json.dumps(good))
    sha1 = hashlib.sha256(path.read_bytes()).hexdigest()
    watch = PipelineWatch(PipelineSource("p", str(path), "http://127.0.0.1:1/metrics",
                                         {"lake": {"type": "file"}, "mirror": {"type": "mqtt"}}),
                          Scrubber())
    watch._read_config()

    def build(t: float, **values):
        return watch._build(t, parse_metrics(METRICS.format(**values)), {"ready": True}, "")

    now = time.time()
    state = build(now, received=10.0, retries=0.0, spooled=0.0, generation=1.0, sha=sha1)
    assert [t["status"] for t in state["targets"]] == ["ok", "ok"]
    assert state["config_is_running"] and "tok-secret-1" not in state["config"]
    assert MASK in state["config"] and "x" in state["config"]
    state = build(now + 1, received=20.0, retries=3.0, spooled=2.0, generation=1.0, sha=sha1)
    lake, mirror = state["targets"]
    assert lake["status"] == "ok" and lake["rate"] == 10.0
    assert mirror["status"] == "down" and "2 batch(es) waiting in its spool" in mirror["why"]

    # An invalid change is rejected with its key path (and no secret in the issue).
    bad = {**good, "mqtt-broker": {"port": "tok-secret-2"}}
    bad["processors"]["score"]["headers"]["Authorization"] = "tok-secret-2"
    path.write_text(json.dumps(bad))
    watch._read_config()
    state = build(now + 2, received=20.0, retries=3.0, spooled=2.0, generation=1.0, sha=sha1)
    rejected = state["history"][0]
    assert rejected["result"] == "rejected"
    assert any(i.startswith("mqtt-broker.port:") for i in rejected["issues"])
    assert "tok-secret-2" not in json.dumps(state)
    # A valid change is pending until the pipeline runs it.
    good["targets"]["lake"]["path"] = str(tmp_path / "other.jsonl")
    path.write_text(json.dumps(good))
    sha2 = hashlib.sha256(path.read_bytes()).hexdigest()
    watch._read_config()
    state = build(now + 3, received=20.0, retries=3.0, spooled=2.0, generation=1.0, sha=sha1)
    assert state["history"][0]["result"] == "pending"
    state = build(now + 4, received=20.0, retries=3.0, spooled=0.0, generation=2.0, sha=sha2)
    assert state["history"][0]["result"] == "applied" and state["history"][0]["generation"] == 2
    assert "other.jsonl" in state["config"]
    # Retries stopped and the spool drained: the target is ok again after DOWN_WINDOW.
    state = build(now + 20, received=30.0, retries=3.0, spooled=0.0, generation=2.0, sha=sha2)
    assert state["targets"][1]["status"] == "ok"


# --- access ------------------------------------------------------------------------


def _client(token):
    import warnings

    with warnings.catch_warnings():  # starlette's note about httpx vs httpx2, not ours
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

    from unsflow.dashboard.app import create_app
    from unsflow.dashboard.hub import Hub
    from unsflow.dashboard.uns import UnsView

    hub = Hub(DashboardConfig(), UnsView(), None, [], Scrubber())
    return TestClient(create_app(hub, [], token), base_url="http://127.0.0.1:8050")


def test_without_a_token_only_loopback_host_names_are_served():
    client = _client(None)
    page = client.get("/")
    assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/", headers={"Host": "localhost:8050"}).status_code == 200
    rebound = client.get("/api/state", headers={"Host": "evil.example:8050"})
    assert rebound.status_code == 403


def test_with_a_token_every_request_needs_it():
    token = "t0ken-for-the-unit-test-42"
    client = _client(token)
    for path in ("/", "/uns", "/api/state", "/api/lake", "/api/events?page=line",
                 "/static/app.js", "/static/vendor/uPlot.iife.min.js"):
        answer = client.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert token not in answer.text
    assert client.get("/api/state", headers={"Authorization": "Bearer wrong-token-0000000"}) \
        .status_code == 401
    assert client.get("/api/state", headers={"Authorization": f"Bearer {token}"}) \
        .status_code == 200
    assert client.get("/healthz").text == "ok\n"
    # ?token= once: a cookie, and the URL without the token.
    first = client.get(f"/pipeline?token={token}&x=1", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/pipeline?x=1"
    assert "HttpOnly" in first.headers["set-cookie"]
    assert client.get("/pipeline").status_code == 200  # the client kept the cookie


# --- offline assets --------------------------------------------------------------


def test_pages_reference_nothing_outside_the_package():
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(r.startswith(("/", "data:")) for r in refs), refs
    for path in refs:
        if path.startswith("/static/"):
            assert (STATIC / path.removeprefix("/static/")).is_file(), path
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
        assert "@import" not in text and "fonts.googleapis" not in text
    # The vendored library mentions its home page in its licence banner only.
    vendored = (STATIC / "vendor" / "uPlot.iife.min.js").read_text()
    assert re.findall(r"https?://[^\s\"')]+", vendored) == ["https://github.com/leeoniya/uPlot"]
    assert vendored.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    assert "url(" not in (STATIC / "vendor" / "uPlot.min.css").read_text()
    assert "MIT License" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()
    assert "uplot 1.6.32 sha512-" in (STATIC / "vendor" / "VERSIONS").read_text()
    script = (Path(__file__).resolve().parents[2] / "scripts" / "vendor_assets.sh").read_text()
    assert "UPLOT_VERSION=1.6.32" in script


# --- the demo's files ------------------------------------------------------------------


@pytest.mark.parametrize("kafka", [False, True])
def test_demo_configs_are_valid(tmp_path, kafka):
    from unsflow.demo.files import DemoState, pipeline_configs, sensors_yaml
    from unsflow.simulator import load_simulator_config

    state = DemoState("127.0.0.1", 1883, "t/x", 9001, 9002, 9003, "abc123",
                      "127.0.0.1:9092" if kafka else None)
    configs = pipeline_configs(state, tmp_path, kafka)
    assert sorted(configs) == (["core.json", "factory.json"] if kafka else ["pipeline.json"])
    for config in configs.values():
        parse_config(json.loads(json.dumps(config)), env={})
    (tmp_path / "sensors.yaml").write_text(sensors_yaml(state, tmp_path, 1.0))
    sim = load_simulator_config(tmp_path / "sensors.yaml", {"host": "127.0.0.1", "port": 1883,
                                                            "prefix": "t/x"})
    assert [m.name for m in sim.machines] == ["press-1", "press-2", "extruder-1", "extruder-2"]
    assert {s.name: s.enabled for s in sim.sensors} == {"vibration": True, "temperature": False}
    dash = from_pipelines([str(tmp_path / n) for n in configs],
                          [parse_config(c, env={}) for c in configs.values()])
    assert dash.alerts == ["t/x/acme/plant1/alerts/+/+", "t/x/acme/plant1/alerts/+/vibration",
                           "t/x/acme/plant1/alerts/+/temperature"]
    assert dash.limits == {"vibration": (35.0, None), "temperature": (54.5, None)}


# --- the target's in-flight gauge the Pipeline page shows -------------------------------


async def test_target_in_flight_counts_messages_until_the_write_returns(tmp_path):
    import asyncio

    from unsflow.engine.deadletter import DeadLetter
    from unsflow.engine.metrics import pipeline_registry  # noqa: F401 (the gauge's home)
    from unsflow.engine.path import TargetPath
    from unsflow.message import Message
    from unsflow.testing import MemoryTarget

    class Slow(MemoryTarget):
        gate = asyncio.Event()

        async def write(self, batch):
            await self.gate.wait()
            return await super().write(batch)

    target = Slow()
    path = TargetPath(target, [], DeadLetter(str(tmp_path / "dead.jsonl")))
    first = asyncio.create_task(path.handle([Message("a/b", b"1") for _ in range(3)]))
    second = asyncio.create_task(path.handle([Message("a/b", b"2") for _ in range(2)]))
    await asyncio.sleep(0.05)
    assert path.stats.in_flight == 5
    Slow.gate.set()
    await asyncio.gather(first, second)
    assert path.stats.in_flight == 0 and path.stats.accepted == 5


def test_sampled_windows_give_the_rates_and_retained_repeats_are_not_counted():
    view = UnsView(alert_filters=["al/#"])
    view.ingest("p/a/l/m1/speed", b"5", True)  # retained, at the first subscription
    start = view.sample_start()
    for _ in range(30):
        view.ingest("p/a/l/m1/speed", b"6", False)
    assert view.sample_end(start, 2.0) == 15.0
    assert view.topics["p/a/l/m1/speed"].rate == 15.0
    view.sampling = 0.2
    view.ingest("p/a/l/m2/speed", b"7", True)
    view.ingest("p/a/l/m2/speed", b"7", True)  # the same retained message, resubscribed
    assert view.topics["p/a/l/m2/speed"].count == 1 and view.redelivered == 1
    view.tick()  # a tick while sampling keeps the windows' rates
    assert view.topics["p/a/l/m1/speed"].rate == 15.0


def test_options_replace_and_add_to_what_the_configs_say(tmp_path, monkeypatch):
    from unsflow.dashboard.command import build_config

    path = tmp_path / "p.json"
    path.write_text(json.dumps({
        "mqtt-broker": {"host": "uns.plant", "port": 1883},
        "subscriptions": {"acme/#": {"qos": 1, "target": "alerts"}},
        "targets": {"alerts": {"type": "mqtt", "topic": "acme/alerts/{record[machine]}",
                               "processors": ["hot"],
                               "mqtt-credential": {"secret-name": "x"}}},
        "processors": {"hot": {"type": "threshold", "match": {"sensor": "t"}, "above": 9}},
        "http": {"port": 9464}}))
    scrubber = Scrubber()
    # As deploy/apps/dashboard runs it: the pipeline in another pod.
    cfg = build_config([str(path)], scrubber, metrics_url=["http://unsflow-metrics:9464/metrics",
                                                           "http://other:9464/metrics"],
                       broker="10.0.0.7:1884", subscribe=["#"], alerts=["x/alerts/+"],
                       lakes=[str(tmp_path)], limits=["t=1:5"])
    assert [p.metrics_url for p in cfg.pipelines] == ["http://unsflow-metrics:9464/metrics",
                                                      "http://other:9464/metrics"]
    assert cfg.pipelines[0].targets["alerts"]["type"] == "mqtt"  # still the config's
    assert (cfg.broker_host, cfg.broker_port, cfg.subscribe) == ("10.0.0.7", 1884, ["#"])
    assert cfg.alerts == ["acme/alerts/+", "x/alerts/+"]
    assert cfg.limits == {"t": (5.0, 1.0)} and cfg.lakes == [str(tmp_path.resolve())]
    monkeypatch.setenv("EDGE_BROKER_HOST", "edge.local")
    monkeypatch.setenv("EDGE_MQTT_PORT", "1999")
    bare = build_config([], Scrubber())
    assert (bare.broker_host, bare.broker_port, bare.pipelines) == ("edge.local", 1999, [])
