"""The dashboard's own MQTT subscription: the project's MQTT source, as an observer.

It reuses :class:`~unsflow.sources.mqtt.MqttSource` (batches per socket read,
one adapter for the MQTT client) on the dashboard's event loop, configured so
that it can never hold the pipeline up:

- QoS 0 and a clean, non-persistent session with a random client id: the
  broker keeps no queue for it while it is away and waits for no
  acknowledgement from it.
- Plain filters only (the pipeline's ``$share/GROUP/`` prefix is removed by
  :mod:`unsflow.dashboard.config`, overlapping filters by
  :func:`~unsflow.dashboard.config.minimal_filters`): it never joins, and so
  never takes messages from, the pipeline's share group, and gets each message
  once.
- A batch is handed to :meth:`UnsView.ingest_batch`: a few counter operations
  per message; the parsing happens later, a bounded number per tick.

A broker that is down is retried by the source; a login the broker refuses is
retried every ``REFUSED_RETRY`` seconds. :attr:`status` says how it is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from unsflow.config.models import BrokerConfig
from unsflow.dashboard.config import minimal_filters
from unsflow.errors import UnsflowError

if TYPE_CHECKING:
    from unsflow.dashboard.config import DashboardConfig
    from unsflow.dashboard.uns import UnsView
    from unsflow.sources.mqtt import MqttSource

__all__ = ["MqttFeed"]

log = logging.getLogger("unsflow.dashboard.mqtt")

REFUSED_RETRY = 30.0


class MqttFeed:
    """Subscribes to the dashboard's filters and feeds a :class:`UnsView` (run as a task)."""

    def __init__(self, config: DashboardConfig, view: UnsView) -> None:
        self.config = config
        self.view = view
        self.filters = minimal_filters([*config.subscribe, *config.alerts])
        self.error = ""
        self._source: MqttSource | None = None

    @property
    def connected(self) -> bool:
        return self._source is not None and bool(self._source.ready)

    @property
    def status(self) -> dict[str, Any]:
        c = self.config
        return {"broker": f"{c.broker_host}:{c.broker_port}", "connected": self.connected,
                "error": (self.error or None) if not self.connected else None,
                "filters": list(self.filters)}

    def _source_for(self) -> MqttSource:
        from unsflow.components import Context
        from unsflow.sources.mqtt import MqttSource, MqttSourceConfig

        c = self.config
        broker = BrokerConfig.model_validate({
            "host": c.broker_host, "port": c.broker_port, "tls": c.broker_tls,
            "clean-start": True, "session-expiry": 0, "reconnect-max": 10.0})
        config = MqttSourceConfig.model_validate({
            "type": "mqtt", "broker": broker, "credential": c.broker_credential,
            "subscriptions": {flt: 0 for flt in self.filters}, "batch-size": 5000})
        return MqttSource("dashboard", config, Context())

    async def run(self) -> None:
        """Connect, subscribe and ingest until cancelled."""
        c = self.config
        while True:
            source = self._source = self._source_for()
            try:
                await source.start()
            except UnsflowError as exc:  # a refused login: say so on the page, try later
                self.error = str(exc)
                log.error("[dashboard] %s; retrying in %.0fs", exc, REFUSED_RETRY)
                await asyncio.sleep(REFUSED_RETRY)
                continue
            log.info("[dashboard] connected to %s:%d, subscribing to %s", c.broker_host,
                     c.broker_port, ", ".join(self.filters))
            try:
                ingest = self.view.ingest_batch
                while True:
                    messages, token = await source.read()
                    ingest(messages)
                    source.ack(token)
            finally:
                await source.stop()
