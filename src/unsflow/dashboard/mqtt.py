"""The dashboard's own MQTT subscription (paho-mqtt, in paho's network thread).

It is an observer, and built so that it can never hold the pipeline up:

- QoS 0 and a clean, non-persistent session: the broker keeps no queue for
  it while it is away and waits for no acknowledgement from it; a slow
  dashboard costs the broker nothing the pipeline waits on.
- Its own random client id, and plain filters only (the pipeline's
  ``$share/GROUP/`` prefix is removed by :mod:`unsflow.dashboard.config`):
  it never joins, and so never takes messages from, the pipeline's share
  group.
- ``retain-as-published``, so that the UNS explorer shows the retained flag
  the publisher set.
- Each message is handed to :meth:`UnsView.ingest`, which does a few counter
  operations (the parsing happens later, at most a bounded number per tick).

paho reconnects by itself (1 s to 30 s apart); :attr:`status` says how the
connection is.
"""

from __future__ import annotations

import logging
import ssl
import uuid
from typing import TYPE_CHECKING, Any

from unsflow.dashboard.config import minimal_filters
from unsflow.errors import MissingDependency

if TYPE_CHECKING:
    from unsflow.dashboard.config import DashboardConfig
    from unsflow.dashboard.uns import UnsView
    from unsflow.secrets.base import Credential

__all__ = ["MqttFeed"]

log = logging.getLogger("unsflow.dashboard.mqtt")


class MqttFeed:
    """Subscribes to the dashboard's filters and feeds a :class:`UnsView`."""

    def __init__(self, config: DashboardConfig, view: UnsView) -> None:
        self.config = config
        self.view = view
        self.client_id = f"unsflow-dashboard-{uuid.uuid4().hex[:10]}"
        self.connected = False
        self.error = ""
        self._client: Any = None

    @property
    def status(self) -> dict[str, Any]:
        c = self.config
        return {"broker": f"{c.broker_host}:{c.broker_port}", "connected": self.connected,
                "error": self.error or None, "filters": list(self._filters())}

    def _filters(self) -> list[str]:
        return minimal_filters([*self.config.subscribe, *self.config.alerts])

    def start(self, credential: Credential | None) -> None:
        """Connect in the background (a broker that is down is retried, never fatal)."""
        try:
            import paho.mqtt.client as mqtt
            from paho.mqtt.subscribeoptions import SubscribeOptions
        except ImportError as exc:
            raise MissingDependency("paho.mqtt", "dashboard") from exc
        c = self.config
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5)
        if credential is not None:
            client.username_pw_set(credential.username, credential.password)
        tls = c.broker_tls
        if tls is not None:
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                           cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED)
            if tls.insecure:
                client.tls_insecure_set(True)
        client.reconnect_delay_set(1, 30)
        options = SubscribeOptions(qos=0, retainAsPublished=True)
        filters = self._filters()

        def on_connect(cl: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if reason.is_failure:
                self.connected = False
                self.error = f"broker refused the connection: {reason}"
                log.warning("[dashboard] %s", self.error)
                return
            self.connected = True
            self.error = ""
            if filters:
                cl.subscribe([(f, options) for f in filters])
            log.info("[dashboard] connected to %s:%d, subscribed to %s", c.broker_host,
                     c.broker_port, ", ".join(filters) or "nothing")

        def on_disconnect(cl: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if self.connected:
                log.warning("[dashboard] disconnected from %s:%d (%s); reconnecting",
                            c.broker_host, c.broker_port, reason)
            self.connected = False
            self.error = f"disconnected: {reason}"

        ingest = self.view.ingest

        def on_message(cl: Any, userdata: Any, message: Any) -> None:
            ingest(message.topic, message.payload, bool(message.retain))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        client.connect_async(c.broker_host, c.broker_port, keepalive=30, clean_start=True)
        client.loop_start()
        self._client = client

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        finally:
            client.loop_stop()
