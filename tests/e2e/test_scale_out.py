"""Scale-out on one machine: several `unsflow run` processes and a real Mosquitto.

- Replicas: N processes with one config and a shared subscription
  (``$share/lake/...``), each with its own client id (``UNSFLOW_CLIENT_ID``, as
  a StatefulSet gives each pod its name) and its own working directory (its
  pod's volume). A numbered QoS 1 stream lands exactly once across them; one
  killed with SIGKILL and restarted under its client id loses nothing; one
  stopped for good (SIGTERM, never restarted: a scale-down) strands nothing,
  because it hands its share back first (``leave-shared-on-stop``); and, with
  that turned off, what Mosquitto does with the departed member's share,
  measured.
- Partitioned: two processes with disjoint topic spaces: no overlap, no gap.
- A network partition longer than the keep-alive between unsflow and the
  broker (toxiproxy dropping every byte both ways while keeping the TCP
  connections open): nothing lost, and /readyz says so while it lasts.

Each test uses a Mosquitto of its own (they kill things and leave persistent
sessions). The figures each prints are quoted in docs/deploy.md.
"""

from __future__ import annotations

import collections
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, _free_ports
from tests.e2e.helpers import ChunkedPublisher, UnsflowProcess, report_scenario
from unsflow.testing import numbered_payload, publish, publish_numbered

pytestmark = pytest.mark.e2e

GROUP = "lake"


def write_config(path: Path, broker: Any, filters: list[str], **broker_extra: Any) -> Path:
    """One pipeline config: ``filters`` at QoS 1 into ``out.jsonl`` of the working directory."""
    http_port = broker_extra.pop("http_port", 0)
    config = {
        "mqtt-broker": {"host": broker.host, "port": broker.port, "clean-start": False,
                        "session-expiry": 600,
                        **{k.replace("_", "-"): v for k, v in broker_extra.items()}},
        "targets": {"out": {"type": "file", "path": "out.jsonl"}},
        "subscriptions": {f: {"qos": 1, "target": "out"} for f in filters},
        "http": {"port": http_port},
        "reload": {"interval": 0},
        "shutdown-timeout": 20,
    }
    path.write_text(json.dumps(config, indent=2))
    return path


class Member:
    """One `unsflow run CONFIG` with its own client id and working directory (a pod)."""

    def __init__(self, root: Path, name: str, config: Path) -> None:
        self.name, self.config = name, config
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: UnsflowProcess | None = None
        self.runs: list[UnsflowProcess] = []

    def start(self) -> Member:
        self.proc = UnsflowProcess(["run", str(self.config)], cwd=self.dir,
                                   env={"UNSFLOW_CLIENT_ID": self.name}).start()
        self.runs.append(self.proc)
        self.proc.wait_for_log("] subscribed:", timeout=30)
        return self

    def kill9(self) -> None:
        assert self.proc
        self.proc.kill9()

    def stop(self) -> int:
        assert self.proc
        return self.proc.terminate()

    def seqs(self) -> collections.Counter:
        """``seq`` of every row written so far (a line being written is skipped)."""
        counts: collections.Counter = collections.Counter()
        path = self.dir / "out.jsonl"
        if not path.exists():
            return counts
        for line in path.read_bytes().splitlines():
            try:
                counts[json.loads(line)["seq"]] += 1
            except (ValueError, KeyError):
                continue
        return counts

    def rows(self) -> list[dict]:
        path = self.dir / "out.jsonl"
        return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() \
            else []

    @property
    def output(self) -> str:
        return "".join(run.output for run in self.runs)


@pytest.fixture
def members(tmp_path: Path) -> Iterator[list[Member]]:
    """Members made by a test; any still running is stopped at the end."""
    made: list[Member] = []
    yield made
    for member in made:
        for run in member.runs:
            if run.proc and run.proc.poll() is None:
                run.terminate()


def total(members: list[Member]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for member in members:
        counts.update(member.seqs())
    return counts


def wait_until(predicate, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def wait_covered(members: list[Member], count: int, timeout: float = 90.0) -> collections.Counter:
    """Wait until every seq in 0..count-1 was written by some member."""
    wait_until(lambda: len(set(total(members)) & set(range(count))) == count, timeout,
               f"all {count} messages written; have {len(set(total(members)))}:\n"
               + "\n".join(f"--- {m.name}\n{m.output[-1500:]}" for m in members))
    return total(members)


def settle(member: Member, quiet: float = 3.0, timeout: float = 60.0) -> collections.Counter:
    """Wait until ``member`` wrote nothing new for ``quiet`` seconds: it took all it is given."""
    deadline = time.monotonic() + timeout
    last, since = sum(member.seqs().values()), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = sum(member.seqs().values())
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return member.seqs()
    raise AssertionError(f"{member.name} never settled")


def test_shared_subscription_lands_exactly_once_across_three_members(own_mqtt_broker, tmp_path,
                                                                     topic_prefix, members):
    count = 9000
    config = write_config(tmp_path / "config.json", own_mqtt_broker,
                          [f"$share/{GROUP}/{topic_prefix}/#"])
    members += [Member(tmp_path, f"lake-{i}", config).start() for i in range(3)]
    # One burst, as fast as the broker acknowledges.
    assert publish_numbered(own_mqtt_broker.host, own_mqtt_broker.port,
                            f"{topic_prefix}/line1/press", count, qos=1) == count
    wait_covered(members, count)
    for member in members:
        assert member.stop() == 0, member.output[-2000:]
    per_member = [sum(m.seqs().values()) for m in members]
    counts = total(members)
    print(f"\nshared, nothing fails: {count} published, per member {per_member}")
    assert set(counts) == set(range(count))
    assert sum(counts.values()) == count, "a message landed twice"
    assert all(n > 0 for n in per_member), per_member


def test_shared_member_killed_and_restarted_under_its_client_id(own_mqtt_broker, tmp_path,
                                                                 topic_prefix, members):
    """Killed mid-burst, with messages in flight to it: what Mosquitto does with them and
    with the dead member's share, and that nothing is lost once it is back."""
    count = 20_000
    config = write_config(tmp_path / "config.json", own_mqtt_broker,
                          [f"$share/{GROUP}/{topic_prefix}/#"])
    members += [Member(tmp_path, f"lake-{i}", config).start() for i in range(2)]
    survivor, victim = members
    # One burst: the broker sends faster than the members write, so the victim dies with
    # messages in flight (sent, not acknowledged) and more queued for it.
    publisher = ChunkedPublisher(own_mqtt_broker.host, own_mqtt_broker.port,
                                 f"{topic_prefix}/line1/press", count, chunk=count)
    publisher.start()
    wait_until(lambda: len(victim.seqs()) >= 3000, 60, "the victim wrote 3,000")
    victim.kill9()
    first_run = victim.seqs()
    last_before_kill = max(total(members))
    publisher.join(120)
    assert publisher.published == count
    settle(survivor)  # it took everything it was given while the victim was dead
    victim.start()
    wait_covered(members, count)
    for member in members:
        assert member.stop() == 0, member.output[-2000:]
    counts = total(members)
    second_run = victim.seqs() - first_run
    resent = {q for q in second_run if q <= last_before_kill}
    dealt_while_dead = {q for q in second_run if q > last_before_kill}
    taken_by_survivor = {q for q in survivor.seqs() if q > last_before_kill}
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    print(f"\nshared, one member SIGKILLed mid-burst (at seq ~{last_before_kill}): back under "
          f"its client id it received {len(resent)} messages published before the kill (in "
          f"flight or queued in its session, sent again) and {len(dealt_while_dead)} dealt to "
          f"it while it was dead; the survivor took {len(taken_by_survivor)} of those "
          f"published after the kill; {duplicates} written twice")
    entry = report_scenario("scale-out: shared member kill -9 and restart", count, counts,
                            note="2 members, $share, same client id on restart")
    assert entry["lost"] == 0
    # Mosquitto keeps dealing the dead member its share and keeps it in its session;
    # what was in flight at the kill (if the victim was behind) is sent to it again, so
    # only those can be written twice.
    assert dealt_while_dead
    assert duplicates <= len(resent)


def _stop_one_for_good(own_mqtt_broker, tmp_path, topic_prefix, members, *, leave: bool):
    count = 20_000
    # A small receive-maximum: the broker holds a queue in each member's session (what it
    # may not send yet), so the leaver has messages queued, not only in flight, when it stops.
    config = write_config(tmp_path / "config.json", own_mqtt_broker,
                          [f"$share/{GROUP}/{topic_prefix}/#"], leave_shared_on_stop=leave,
                          receive_maximum=20)
    members += [Member(tmp_path, f"lake-{i}", config).start() for i in range(2)]
    stayer, leaver = members
    # One burst: the broker queues faster than the members write, so the leaver stops
    # with a backlog in its session.
    publisher = ChunkedPublisher(own_mqtt_broker.host, own_mqtt_broker.port,
                                 f"{topic_prefix}/line1/press", count, chunk=count)
    publisher.start()
    wait_until(lambda: len(leaver.seqs()) >= 2000, 60, "the leaver wrote 2,000")
    assert leaver.stop() == 0, leaver.output[-2000:]
    stopped_at = max(total([stayer, leaver]))
    publisher.join(120)
    assert publisher.published == count
    return count, stayer, leaver, stopped_at


def test_shared_member_stopped_for_good_hands_its_share_back(own_mqtt_broker, tmp_path,
                                                            topic_prefix, members):
    count, stayer, leaver, stopped_at = _stop_one_for_good(
        own_mqtt_broker, tmp_path, topic_prefix, members, leave=True)
    wait_covered(members, count)
    assert stayer.stop() == 0
    counts = total(members)
    taken = [line for line in leaver.output.splitlines() if "handed back" in line]
    print(f"\nshared, one member stopped for good (leave-shared-on-stop true): stopped at "
          f"seq {stopped_at} of a burst; {taken[-1].split(': ', 2)[-1] if taken else ''}; the "
          f"other member wrote {sum(stayer.seqs().values())}")
    assert taken, leaver.output[-2000:]
    entry = report_scenario("scale-out: shared member stopped for good", count, counts,
                            note="2 members, $share, SIGTERM, never restarted")
    assert entry["lost"] == 0


def test_mosquitto_strands_the_share_of_a_member_that_keeps_its_filters(own_mqtt_broker,
                                                                       tmp_path, topic_prefix,
                                                                       members):
    """The measurement behind leave-shared-on-stop: without it, Mosquitto keeps dealing the
    departed member its share; those messages wait in its session, never reach the other
    member, and come out only when a process takes that client id again."""
    count, stayer, leaver, stopped_at = _stop_one_for_good(
        own_mqtt_broker, tmp_path, topic_prefix, members, leave=False)
    settled = set(settle(stayer)) | set(leaver.seqs())
    stranded = count - len(settled & set(range(count)))
    print(f"\nshared, one member stopped keeping its $share filter: stopped at seq "
          f"{stopped_at} of a burst of {count}; stranded in its session: {stranded}")
    assert stranded > 0
    leaver.start()  # the same client id takes its session back
    wait_covered(members, count)
    for member in members:
        member.stop()
    entry = report_scenario("scale-out: $share kept by a stopped member", count, total(members),
                            note=f"{stranded} stranded until the member came back")
    assert entry["lost"] == 0


def test_partitioned_members_cover_the_stream_with_no_overlap_and_no_gap(own_mqtt_broker,
                                                                         tmp_path,
                                                                         topic_prefix,
                                                                         members):
    count = 8000
    for area in ("area1", "area2"):
        config = write_config(tmp_path / f"config-{area}.json", own_mqtt_broker,
                              [f"{topic_prefix}/{area}/#"])
        members.append(Member(tmp_path, f"lake-{area}", config).start())
    areas = ("area1", "area2")
    publish(own_mqtt_broker.host, own_mqtt_broker.port,
            ((f"{topic_prefix}/{areas[seq % 2]}/press", numbered_payload(seq))
             for seq in range(count)), qos=1)
    wait_covered(members, count)
    for member in members:
        assert member.stop() == 0
    counts = total(members)
    assert sum(counts.values()) == count and set(counts) == set(range(count))
    for member, area in zip(members, areas, strict=True):
        topics = {row["_topic"] for row in member.rows()}
        assert topics == {f"{topic_prefix}/{area}/press"}, topics
    print(f"\npartitioned: {[sum(m.seqs().values()) for m in members]} of {count}, "
          "no overlap, no gap")


# ---------------------------------------------------------------- network partition


class Toxiproxy:
    """toxiproxy-server (built by scripts/tools.sh) on a loopback port of its own."""

    def __init__(self, binary: str, port: int, log: Path) -> None:
        self.api = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen([binary, "-host", "127.0.0.1", "-port", str(port)],
                                     stdout=log.open("w"), stderr=subprocess.STDOUT)
        wait_until(self._up, 20, f"toxiproxy answering on {self.api}", poll=0.1)

    def _up(self) -> bool:
        try:
            self.call("GET", "/version")
            return True
        except OSError:
            return False

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read()
        return json.loads(text) if text.strip().startswith((b"{", b"[")) else text

    def proxy(self, name: str, listen_port: int, upstream: str) -> None:
        self.call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{listen_port}",
                                       "upstream": upstream, "enabled": True})

    def cut(self, name: str) -> None:
        """Drop every byte both ways, connections left open: a silent partition."""
        for stream in ("upstream", "downstream"):
            self.call("POST", f"/proxies/{name}/toxics",
                      {"name": f"cut-{stream}", "type": "timeout", "stream": stream,
                       "toxicity": 1.0, "attributes": {"timeout": 0}})

    def heal(self, name: str) -> None:
        for stream in ("upstream", "downstream"):
            self.call("DELETE", f"/proxies/{name}/toxics/cut-{stream}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def toxiproxy(tmp_path: Path) -> Iterator[Toxiproxy]:
    built = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "tools.sh"), "path", "toxiproxy"],
                           capture_output=True, text=True, timeout=900, check=False)
    if built.returncode != 0:
        pytest.fail(f"scripts/tools.sh path toxiproxy failed:\n{built.stderr}", pytrace=False)
    (port,) = _free_ports(1)
    proxy = Toxiproxy(built.stdout.strip(), port, tmp_path / "toxiproxy.log")
    yield proxy
    proxy.close()


def readyz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_network_partition_longer_than_the_keepalive(own_mqtt_broker, toxiproxy, tmp_path,
                                                     topic_prefix, members):
    count, keepalive = 20_000, 5
    proxy_port, http_port = _free_ports(2)
    toxiproxy.proxy("uns", proxy_port, f"{own_mqtt_broker.host}:{own_mqtt_broker.port}")

    class ViaProxy:
        host, port = "127.0.0.1", proxy_port

    config = write_config(tmp_path / "config.json", ViaProxy, [f"{topic_prefix}/#"],
                          keepalive=keepalive, http_port=http_port, reconnect_max=2.0)
    member = Member(tmp_path, "lake-0", config).start()
    members.append(member)
    wait_until(lambda: readyz(http_port)[0] == 200, 20, "/readyz 200 before the partition")
    # The publisher talks to the broker directly: the factory goes on producing.
    publisher = ChunkedPublisher(own_mqtt_broker.host, own_mqtt_broker.port,
                                 f"{topic_prefix}/line1/press", count, chunk=250, pause=0.1)
    publisher.start()
    wait_until(lambda: publisher.published >= 3000 and member.seqs(), 60, "stream flowing")
    toxiproxy.cut("uns")
    cut_at = time.monotonic()
    written_at_cut = sum(member.seqs().values())
    wait_until(lambda: readyz(http_port)[0] == 503, 4 * keepalive + 10,
               "/readyz 503 during the partition")
    noticed_after = time.monotonic() - cut_at
    status, report = readyz(http_port)
    assert status == 503 and "not connected" in report["reason"], report
    # Keep it cut well past the keep-alive on both sides (Mosquitto drops the client at
    # 1.5 x keep-alive, gmqtt closes at 2 x): still not ready all along.
    while time.monotonic() - cut_at < 4 * keepalive:
        assert readyz(http_port)[0] == 503
        time.sleep(0.5)
    written_during = sum(member.seqs().values()) - written_at_cut
    toxiproxy.heal("uns")
    healed_at = time.monotonic()
    wait_until(lambda: readyz(http_port)[0] == 200, 60, "/readyz 200 after the partition")
    ready_again_after = time.monotonic() - healed_at
    publisher.join(180)
    assert publisher.published == count
    wait_covered(members, count, timeout=120)
    assert member.stop() == 0
    counts = total(members)
    print(f"\nnetwork partition of {healed_at - cut_at:.1f}s (keep-alive {keepalive}s): /readyz "
          f"503 after {noticed_after:.1f}s, 200 again {ready_again_after:.1f}s after it healed; "
          f"{written_during} rows written while cut (acknowledged before it)")
    entry = report_scenario("scale-out: network partition > keep-alive", count, counts,
                            note=f"partition {healed_at - cut_at:.0f}s, keep-alive {keepalive}s")
    assert entry["lost"] == 0
