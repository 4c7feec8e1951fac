"""The mqtt_broker fixture and the unsflow.testing MQTT helpers, against the real Mosquitto."""

from __future__ import annotations

import doctest
import json
import socket
import sys
import threading
from collections.abc import Iterator

import pytest

import unsflow.testing
from unsflow.errors import AccessDenied, MissingDependency, NotConnected
from unsflow.testing import Collector, publish, publish_numbered, subscribe_collect

pytestmark = pytest.mark.integration


def seqs(messages: list[tuple[str, bytes]]) -> list[int]:
    return [json.loads(payload)["seq"] for _, payload in messages]


@pytest.mark.parametrize("protocol", [5, 4], ids=["mqtt5", "mqtt311"])
def test_2000_numbered_qos1_messages_all_arrive(mqtt_broker, topic_prefix, protocol):
    topic = f"{topic_prefix}/line1/press"
    with Collector(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/#", protocol=protocol) as c:
        acked = publish_numbered(
            mqtt_broker.host, mqtt_broker.port, topic, 2000, qos=1, protocol=protocol
        )
        messages = c.wait(2000, timeout=30)

    assert acked == 2000
    assert set(seqs(messages)) == set(range(2000))
    assert {t for t, _ in messages} == {topic}
    first = json.loads(messages[0][1])
    assert set(first) == {"seq", "value", "ts"}
    assert isinstance(first["value"], float) and first["ts"] > 1_600_000_000_000


def test_qos2_and_custom_payloads_with_start(mqtt_broker, topic_prefix):
    topic = f"{topic_prefix}/q2"
    messages = subscribe_collect(
        mqtt_broker.host, mqtt_broker.port, topic, 50, timeout=10, qos=2,
        after_subscribe=lambda: publish_numbered(
            mqtt_broker.host, mqtt_broker.port, topic, 50, qos=2, start=100,
            make_payload=lambda i: f"n={i}".encode(),
        ),
    )  # fmt: skip
    assert sorted(p for _, p in messages) == sorted(f"n={i}".encode() for i in range(100, 150))


def test_tls_with_password_round_trip(mqtt_broker, topic_prefix):
    topic = f"{topic_prefix}/tls"
    tls = mqtt_broker.tls_options()
    with Collector(mqtt_broker.host, mqtt_broker.tls_port, topic, **tls) as c:
        acked = publish_numbered(mqtt_broker.host, mqtt_broker.tls_port, topic, 10, **tls)
        messages = c.wait(10, timeout=10)
    assert acked == 10
    assert sorted(seqs(messages)) == list(range(10))


def test_tls_with_client_certificate(mqtt_broker, topic_prefix):
    # The listener does not require a client certificate, but one signed by the
    # test CA must load and be accepted alongside the password.
    acked = publish(
        mqtt_broker.host, mqtt_broker.tls_port, [(f"{topic_prefix}/mtls", b"1")],
        tls_cert=mqtt_broker.client_cert, tls_key=mqtt_broker.client_key,
        **mqtt_broker.tls_options(),
    )  # fmt: skip
    assert acked == 1


@pytest.mark.parametrize("protocol", [5, 4], ids=["mqtt5", "mqtt311"])
def test_wrong_password_is_refused(mqtt_broker, topic_prefix, protocol):
    # Mosquitto 2.0 answers a wrong password with "Not authorized" (0x87 in
    # MQTT 5; CONNACK code 5 in 3.1.1, which paho reports as 0x87), not 0x86.
    with pytest.raises(AccessDenied) as err:
        publish(
            mqtt_broker.host, mqtt_broker.tls_port, [(f"{topic_prefix}/x", b"1")],
            username=mqtt_broker.username, password="not-the-password",
            tls_ca=mqtt_broker.ca_file, protocol=protocol, timeout=10,
        )  # fmt: skip
    assert str(err.value) == (
        f"MQTT broker {mqtt_broker.host}:{mqtt_broker.tls_port} refused the connection: "
        "Not authorized (reason code 135)"
    )


def test_anonymous_login_is_refused_on_the_tls_port(mqtt_broker):
    with pytest.raises(AccessDenied, match="refused the connection: Not authorized"):
        Collector(mqtt_broker.host, mqtt_broker.tls_port, "a/#", tls_ca=mqtt_broker.ca_file).start()


# paho 2.2 leaves the socket of a failed TLS handshake open for the collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_without_the_test_ca_fails_verification(mqtt_broker):
    # No tls_ca but a client certificate: TLS on, verified against the system CAs.
    with pytest.raises(NotConnected, match="certificate verify failed"):
        publish(
            mqtt_broker.host, mqtt_broker.tls_port, [], username=mqtt_broker.username,
            password=mqtt_broker.password, tls_cert=mqtt_broker.client_cert,
            tls_key=mqtt_broker.client_key,
        )  # fmt: skip


def test_wait_names_how_many_arrived(mqtt_broker, topic_prefix):
    topic = f"{topic_prefix}/few"
    with Collector(mqtt_broker.host, mqtt_broker.port, topic) as c:
        publish_numbered(mqtt_broker.host, mqtt_broker.port, topic, 3)
        with pytest.raises(TimeoutError, match=r"^3 of 5 messages arrived on 't/.*/few'"):
            c.wait(5, timeout=1)
        assert sorted(seqs(c.messages)) == [0, 1, 2]


def test_topic_prefix_is_unique_and_named_after_the_test(topic_prefix):
    parts = topic_prefix.split("/")
    assert parts[:2] == ["t", "test_topic_prefix_is_unique_and_named_after_the_test"]
    assert len(parts) == 3 and len(parts[2]) == 8 and "+" not in topic_prefix


def test_nothing_listening_is_a_connection_error():
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NotConnected, match=f"cannot connect to MQTT broker 127.0.0.1:{port}"):
        publish("127.0.0.1", port, [("a", b"1")], timeout=5)


@pytest.fixture
def broker_that_never_acks() -> Iterator[int]:
    """A TCP server that answers CONNECT with a CONNACK and then acknowledges nothing.

    Mosquitto cannot be made to withhold a PUBACK, and the helper's promise is
    exactly what happens then: an error naming how many were not acknowledged.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    conns: list[socket.socket] = []

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conns.append(conn)
        try:
            conn.recv(65536)  # CONNECT
            conn.sendall(bytes([0x20, 0x03, 0x00, 0x00, 0x00]))  # MQTT 5 CONNACK, success
            while conn.recv(65536):  # PUBLISH..., DISCONNECT; never a PUBACK
                pass
        except OSError:  # the client reset the connection, or teardown closed it
            return

    thread = threading.Thread(target=serve, name="broker-that-never-acks", daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    for conn in conns:
        conn.close()
    thread.join(5)


def test_publish_timeout_names_the_unacknowledged(broker_that_never_acks):
    messages = [(f"t/never/{i}", b"x") for i in range(3)]
    with pytest.raises(
        TimeoutError, match=r"^3 of 3 messages were not acknowledged by MQTT broker"
    ):
        publish("127.0.0.1", broker_that_never_acks, messages, timeout=1)


def test_missing_paho_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)
    with pytest.raises(MissingDependency, match=r"unsflow\[dev\]"):
        publish("127.0.0.1", 1, [])


def test_docstring_examples():
    result = doctest.testmod(unsflow.testing.mqtt)
    assert result.attempted > 0 and result.failed == 0


def test_publisher_and_persistent_collector_survive_a_broker_restart(own_mqtt_broker, topic_prefix):
    broker = own_mqtt_broker
    topic = f"{topic_prefix}/restart"

    def messages():
        for seq in range(10_000):
            if seq == 3_000:
                # The publisher still has up to a window of messages in flight:
                # the broker goes down under it (SIGTERM saves its queues) and
                # comes back; publish() must reconnect and send them again.
                broker.stop()
                broker.start()
            yield topic, json.dumps({"seq": seq}).encode()

    with Collector(broker.host, broker.port, topic, persistent=True) as c:
        acked = publish(broker.host, broker.port, messages(), timeout=60)
        received = c.wait(10_000, timeout=60, distinct=True)

    assert acked == 10_000
    assert set(seqs(received)) == set(range(10_000))  # duplicates allowed: at-least-once


def test_own_broker_comes_back_after_kill_9(own_mqtt_broker, topic_prefix):
    broker = own_mqtt_broker
    broker.kill()
    broker.start()  # a stale pid file is not mistaken for a running broker
    topic = f"{topic_prefix}/after-kill"
    messages = subscribe_collect(
        broker.host, broker.port, topic, 1, timeout=10,
        after_subscribe=lambda: publish(broker.host, broker.port, [(topic, b"back")]),
    )  # fmt: skip
    assert messages == [(topic, b"back")]


def test_end_session_deletes_a_persistent_session_and_its_queue(mqtt_broker, topic_prefix):
    from unsflow.testing import Collector, end_session, publish

    client_id = f"end-session-{topic_prefix.rsplit('/', 1)[-1]}"
    with Collector(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/#", client_id=client_id,
                   persistent=True):
        pass  # subscribed in a persistent session, then gone
    publish(mqtt_broker.host, mqtt_broker.port, [(f"{topic_prefix}/a", b"queued")], qos=1)
    assert end_session(mqtt_broker.host, mqtt_broker.port, client_id) is True
    assert end_session(mqtt_broker.host, mqtt_broker.port, client_id) is False
