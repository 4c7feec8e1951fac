"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the real
Mosquitto, a real `unsflow run` and `unsflow dashboard` started as a user starts them.

One pipeline, one dashboard and one browser serve the whole module. Each test saves a
screenshot under build/screenshots/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import OwnBroker, _broker_fields, _free_ports, services, services_up
from tests.e2e.browser import watch
from tests.e2e.helpers import UnsflowProcess
from unsflow.testing import publish

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    """A Mosquitto of this module's own (the red-target test stops it)."""
    port, tls_port = _free_ports(2)
    data = tmp_path_factory.mktemp("own-broker")
    env = {**os.environ, "UNSFLOW_SERVICES_DIR": str(data / "services"),
           "UNSFLOW_MQTT_PORT": str(port), "UNSFLOW_MQTTS_PORT": str(tls_port)}
    info = services_up("mosquitto", env)
    broker = OwnBroker(**_broker_fields(info), data_dir=env["UNSFLOW_SERVICES_DIR"], env=env)
    yield broker
    services("down", "mosquitto", env)


@dataclass
class Line:
    url: str
    prefix: str
    lake: Path
    broker: Any
    own: OwnBroker
    run: UnsflowProcess
    dashboard: UnsflowProcess

    def reading_topic(self, machine: str, sensor: str = "vibration") -> str:
        return f"{self.prefix}/acme/plant1/area1/line1/{machine}/{sensor}"

    def publish_readings(self, machine: str, values: list[float], step_ms: int = 1000) -> None:
        t0 = int(time.time() * 1000) - step_ms * len(values)
        messages = [(self.reading_topic(machine), json.dumps({
            "value": v, "unit": "mm/s", "timestamp": t0 + i * step_ms, "machine": machine,
            "sensor": "vibration"}).encode()) for i, v in enumerate(values)]
        publish(self.broker.host, self.broker.port, messages, qos=1)


def _wait_http(url: str, proc: UnsflowProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc is not None and proc.proc.poll() is None, proc.output[-3000:]
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s:\n{proc.output[-3000:]}")


def _wait_subscribed(base: str, proc: UnsflowProcess, timeout: float = 30.0) -> None:
    """Until the dashboard's own MQTT subscription is confirmed (its feed is QoS 0 with a
    clean session: what is published before it subscribed never reaches it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(base + "/api/state", timeout=5, trust_env=False).json()["status"]
        if status["connected"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"the dashboard did not subscribe within {timeout}s:\n"
                         f"{proc.output[-3000:]}")


@pytest.fixture(scope="module")
def line(mqtt_broker: Any, own_broker: OwnBroker,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    from unsflow.demo.files import MODEL
    from unsflow.demo.warmup import ensure_model

    tmp = tmp_path_factory.mktemp("line")
    ensure_model(tmp)  # a real model (the demo's warm-up), in tmp/models
    prefix = f"t/dashboard-browser/{uuid.uuid4().hex[:8]}"
    run_port, dash_port = _free_ports(2)
    base = {"type": "mqtt", "mqtt-broker-host": mqtt_broker.host,
            "mqtt-broker-port": mqtt_broker.port}
    config = {
        "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.port},
        "subscriptions": {
            f"{prefix}/acme/plant1/+/+/+/vibration":
                {"qos": 1, "target": ["lake", "anomaly-alerts", "mirror"]},
            f"{prefix}/iot-sensor/sw/+": {"qos": 1, "target": "lake"}},
        "processors": {
            "windows": {"type": "window", "size": 5, "key-fields": ["machine", "sensor"],
                        "time-field": "timestamp"},
            "anomaly-model": {"type": "model", "store": str(tmp / "models"), "model": MODEL,
                              "output": "all", "poll-interval": 0},
            "anomalies-only": {"type": "filter", "field": "inference.label", "equals": 1},
            "vibration-limit": {"type": "threshold", "match": {"sensor": "vibration"},
                                "above": 35}},
        "targets": {
            "lake": {"type": "s3", "local-path": str(tmp / "lake"), "format": "parquet",
                     "batching": {"max-age": 0.3}},
            "anomaly-alerts": {**base, "topic": prefix + "/alerts/{record[machine]}/{record[sensor]}",
                               "processors": ["windows", "anomaly-model", "anomalies-only"]},
            "mirror": {"type": "mqtt", "mqtt-broker-host": own_broker.host,
                       "mqtt-broker-port": own_broker.port, "topic": prefix + "/mirror/{topic}",
                       "publish-timeout": 2}},
        "dead-letter": {"path": str(tmp / "dead.jsonl")},
        "spool": {"path": str(tmp / "spool")},
        "http": {"host": "127.0.0.1", "port": run_port},
    }
    (tmp / "pipeline.json").write_text(json.dumps(config, indent=2))
    run = UnsflowProcess(["run", str(tmp / "pipeline.json")], cwd=tmp, env={}).start()
    dashboard = UnsflowProcess(["dashboard", "--config", str(tmp / "pipeline.json"), "--port",
                                str(dash_port), "--update-interval", "0.25"],
                               cwd=tmp, env={}).start()
    try:
        _wait_http(f"http://127.0.0.1:{run_port}/readyz", run)
        _wait_http(f"http://127.0.0.1:{dash_port}/healthz", dashboard)
        _wait_subscribed(f"http://127.0.0.1:{dash_port}", dashboard)
        yield Line(f"http://127.0.0.1:{dash_port}", prefix, tmp / "lake", mqtt_broker,
                   own_broker, run, dashboard)
    finally:
        codes = (dashboard.terminate(), run.terminate())
    assert codes == (0, 0), run.output[-2000:] + dashboard.output[-2000:]


def test_pages_load_without_console_errors(browser, line):
    line.publish_readings("m-first", [12.0, 12.5, 13.0, 13.5, 14.0])
    w = watch(browser, line.url)
    waits = {"/": ".chart[data-machine='m-first'][data-points='5']",
             "/uns": f".node[data-topic='{line.reading_topic('m-first')}']",
             "/pipeline": "tr.target[data-target='lake']",
             "/lake": "section.lake"}
    for path, selector in waits.items():
        answer = w.page.goto(line.url + path)
        assert answer is not None and answer.status == 200
        w.page.wait_for_selector(selector)
        if path == "/uns":  # the selected topic's last payload, in full
            w.page.click(f"{selector} > .row")
            detail = w.page.wait_for_selector("#detail pre")
            assert json.loads(detail.inner_text())["value"] == 14.0
            w.page.fill("#filter", "no-such-topic")
            w.page.wait_for_selector("#topic-count:has-text('0 topic(s)')")
            w.page.fill("#filter", "m-first")
            w.page.wait_for_selector(selector)
        w.page.wait_for_timeout(500)  # a second round of updates, for errors they may cause
        w.shot(f"dashboard-{(path.strip('/') or 'line')}")
    assert w.problems == []
    assert line.dashboard.output.count("Traceback") == 0, line.dashboard.output[-3000:]


def test_a_chart_receives_points_published_to_mosquitto(browser, line):
    w = watch(browser, line.url)
    w.page.goto(line.url + "/")
    w.page.wait_for_selector("#status.ok")
    values = [round(12 + (i % 7) * 0.5, 2) for i in range(25)]
    line.publish_readings("m-chart", values)
    t0 = int(time.time() * 1000)
    csv = [(f"{line.prefix}/iot-sensor/sw/vibration",
            f"floor-1-line-1-extruder-7,pump-7,{14 + i / 10:.1f},{t0 + i * 1000}".encode())
           for i in range(10)]
    publish(line.broker.host, line.broker.port, csv, qos=1)
    chart = w.page.wait_for_selector(".chart[data-machine='m-chart'][data-points='25']")
    assert chart.query_selector(".value").inner_text() == f"{values[-1]:g}"
    assert "limit ≤ 35 mm/s" in chart.inner_text()
    assert chart.query_selector("canvas") is not None
    group = w.page.query_selector(".group:has(.chart[data-machine='m-chart']) > h2").inner_text()
    assert group.replace("\n", "") == f"{line.prefix}/acme/plant1/area1/line1"
    redhat = w.page.wait_for_selector(
        ".chart[data-machine='floor-1-line-1-extruder-7'][data-points='10']")
    assert redhat.query_selector(".value").inner_text() == "14.9"
    w.shot("dashboard-chart-points")
    assert w.problems == []


def test_an_injected_anomaly_makes_an_alert_appear(browser, line):
    w = watch(browser, line.url)
    w.page.goto(line.url + "/")
    w.page.wait_for_selector("#status.ok")
    values = [12.0, 13.0, 12.5, 14.0, 13.5, 12.0, 13.0, 14.5, 13.0, 12.5,
              41.0, 13.0, 12.0, 13.5, 14.0]
    line.publish_readings("m-spike", values)
    alert = w.page.wait_for_selector("li.alert.anomaly[data-machine='m-spike']")
    assert alert.get_attribute("data-version") == "1"
    text = alert.inner_text()
    assert "m-spike · vibration = 41" in text and "model vibration-anomaly v1" in text
    # The alert belongs to the spike only: no other reading of the machine was flagged.
    w.page.wait_for_timeout(1500)
    assert len(w.page.query_selector_all("li.alert.anomaly[data-machine='m-spike']")) == 1
    w.shot("dashboard-anomaly-alert")
    assert w.problems == []


def test_the_lake_page_previews_rows(browser, line):
    import duckdb

    line.publish_readings("m-lake", [15.0, 15.5, 16.0])
    w = watch(browser, line.url)
    w.page.goto(line.url + "/lake")
    w.page.wait_for_selector("section.lake .partitions li")
    w.page.click("button.preview-partition")
    w.page.wait_for_selector(".preview-box table.preview tbody tr")
    shown = w.page.inner_text(".preview-box")
    rows = w.page.query_selector_all(".preview-box table.preview tbody tr")
    assert 0 < len(rows) <= 50
    headers = [h.inner_text() for h in w.page.query_selector_all(".preview-box thead th")]
    assert {"value", "machine", "_topic"} <= set(headers)
    # The DuckDB line on the page reads the same partition.
    query = w.page.inner_text(".preview-box code.duckdb")
    assert query.startswith("SELECT * FROM read_parquet('" + str(line.lake))
    total = int(shown.split(" of ", 1)[1].split(" rows", 1)[0].replace(",", ""))
    counted = duckdb.sql(query.replace("SELECT *", "SELECT count(*)").rsplit(" LIMIT", 1)[0])
    assert counted.fetchall()[0][0] >= total > 0
    # One object's rows.
    w.page.click("table.objects button.preview-object")
    w.page.wait_for_selector(".preview-box h2:has-text('.parquet')")
    assert w.page.query_selector_all(".preview-box table.preview tbody tr")
    w.shot("dashboard-lake-preview")
    assert w.problems == []


def test_a_stopped_target_turns_red(browser, line):
    w = watch(browser, line.url)
    w.page.goto(line.url + "/pipeline")
    line.publish_readings("m-mirror", [12.0, 12.5])
    w.page.wait_for_selector("tr.target[data-target='mirror'][data-status='ok']")
    line.own.stop()
    try:
        line.publish_readings("m-mirror", [13.0, 13.5, 14.0])
        row = w.page.wait_for_selector("tr.target[data-target='mirror'][data-status='down']")
        assert "waiting in its spool" in row.inner_text() or "retried" in row.inner_text()
        color = row.eval_on_selector("td", "td => getComputedStyle(td).backgroundColor")
        assert color == "rgb(254, 226, 226)"  # --bad-bg
        assert w.page.query_selector("tr.target[data-target='lake'][data-status='ok']")
        w.shot("dashboard-target-down")
    finally:
        line.own.start()
    # Back: the spool drains and the row turns green again.
    w.page.wait_for_selector("tr.target[data-target='mirror'][data-status='ok']", timeout=60_000)
    assert w.problems == []


# --- access and secrets: a dashboard of its own ----------------------------------------


def test_a_token_is_required_and_no_secret_shows(browser, mqtt_broker, tmp_path, topic_prefix):
    inline = f"inline-Sup3r-{uuid.uuid4().hex[:10]}"
    url_pass = f"urlpass-{uuid.uuid4().hex[:10]}"
    token = f"tok-{uuid.uuid4().hex}"
    metrics_port, port = _free_ports(2)
    config = {
        "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.tls_port,
                        "tls": {"ca-file": mqtt_broker.ca_file}},
        "mqtt-broker-credential": {"secret-name": "dash-uns-login", "provider": "env"},
        "subscriptions": {f"{topic_prefix}/#": {"qos": 1, "target": "alerts"}},
        "processors": {"score": {"type": "remote", "base-url": f"http://svc:{url_pass}@svc:8000",
                                 "processor-id": "m",
                                 "headers": {"Authorization": f"Bearer {inline}"}}},
        "targets": {"alerts": {"type": "mqtt", "processors": ["score"],
                               "mqtt-credential": {"secret-name": "dash-uns-login"}}},
        "http": {"host": "127.0.0.1", "port": metrics_port},
    }
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(config, indent=2))
    secrets = [inline, url_pass, mqtt_broker.password, token]
    env = {"DASH_UNS_LOGIN": json.dumps({"username": mqtt_broker.username,
                                         "password": mqtt_broker.password})}

    # Beyond loopback without a token: refused before anything starts.
    refused = subprocess.run([sys.executable, "-m", "unsflow.cli", "dashboard", "--config",
                              str(path), "--host", "0.0.0.0", "--port", str(port)],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env}, check=False)
    assert refused.returncode == 1
    assert "give an access token with --token or UNSFLOW_DASHBOARD_TOKEN" in refused.stderr

    dash = UnsflowProcess(["--log-level", "debug", "dashboard", "--config", str(path), "--host",
                           "0.0.0.0", "--port", str(port)], cwd=tmp_path,
                          env={**env, "UNSFLOW_DASHBOARD_TOKEN": token}).start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base + "/healthz", dash)
        for p in ("/", "/pipeline", "/api/state", "/api/events?page=pipeline", "/static/app.js"):
            assert httpx.get(base + p, trust_env=False).status_code == 401, p
        w = watch(browser, base)
        answer = w.page.goto(base + "/")
        assert answer is not None and answer.status == 401
        assert "needs its access token" in w.page.inner_text("body")
        w.shot("dashboard-401")
        w.problems.clear()  # the 401 itself is logged by the browser as a failed load

        # With the token once in the URL: a cookie, then every page works.
        answer = w.page.goto(f"{base}/pipeline?token={token}")
        assert answer is not None and answer.status == 200 and "token" not in w.page.url
        w.page.wait_for_selector("#status.ok")  # connected over TLS with the credential
        w.page.click("details.config-details summary")
        shown = w.page.inner_text("pre.config")
        assert "•••" in shown and "dash-uns-login" in shown
        # A rejected change, with a secret where a number belongs: the key path, no secret.
        config["mqtt-broker"]["port"] = inline
        path.write_text(json.dumps(config, indent=2))
        issue = w.page.wait_for_selector(".history .issues li")
        assert issue.inner_text().startswith("mqtt-broker.port:")
        w.shot("dashboard-secrets-masked")
        pages = []
        for p in ("/pipeline", "/", "/uns", "/lake"):
            w.page.goto(base + p)
            w.page.wait_for_timeout(800)
            pages.append(w.page.content())
        headers = {"Authorization": f"Bearer {token}"}
        state = httpx.get(base + "/api/state", headers=headers, trust_env=False).text
        events = b""
        with httpx.stream("GET", base + "/api/events?page=pipeline", headers=headers,
                          trust_env=False, timeout=10) as stream:
            for chunk in stream.iter_bytes():
                events += chunk
                if events.count(b"event: ") >= 3:
                    break
        assert b"event: pipelines" in events
        assert w.problems == []
    finally:
        code = dash.terminate()
    assert code == 0, dash.output[-3000:]
    log = dash.output
    assert "connected to" in log  # debug logging was on, and it logged
    for secret in secrets:
        for where, text in [("page", "".join(pages)), ("state", state),
                             ("events", events.decode()), ("log", log)]:
            assert secret not in text, f"{secret!r} in the {where}"
