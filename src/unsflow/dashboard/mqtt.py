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
- **Sampling above a budget.** Every message the dashboard takes costs the
  broker one more delivery and the dashboard about 15 µs of CPU. When the
  sensor topics carry more than ``max_rate`` messages per second, the feed
  subscribes to them for only the share ``max_rate / rate`` of each
  ``SAMPLE_PERIOD`` (at least ``MIN_SHARE``), so the broker's extra work and
  the dashboard's stay about ``max_rate`` whatever the UNS carries. Alert
  topics stay subscribed all the time: no alert is missed. The pages say that
  they show a sample, and rates are measured over the subscribed windows. A
  broker sends the retained messages again at each subscription; the period
  grows so that those stay below half the budget.

A broker that is down is retried by the source; a login the broker refuses is
retried every ``REFUSED_RETRY`` seconds. :attr:`status` says how it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
SAMPLE_PERIOD = 4.0  # seconds of one subscribed-unsubscribed cycle (at least)
MAX_PERIOD = 60.0
MIN_SHARE = 0.05


class MqttFeed:
    """Subscribes to the dashboard's filters and feeds a :class:`UnsView` (run as a task)."""

    def __init__(self, config: DashboardConfig, view: UnsView) -> None:
        self.config = config
        self.view = view
        self.filters = minimal_filters([*config.subscribe, *config.alerts])
        self.alert_filters = minimal_filters(list(config.alerts))
        self.max_rate = config.max_rate
        self.uns_rate = 0.0  # messages per second on the sensor topics, last measured
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
                "filters": list(self.filters), "sampling": round(self.view.sampling, 3),
                "uns_rate": round(self.uns_rate)}

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
            sampler = asyncio.create_task(self._sample(source), name="dashboard-sampler") \
                if self.max_rate > 0 else None
            try:
                ingest = self.view.ingest_batch
                while True:
                    messages, token = await source.read()
                    ingest(messages)
                    source.ack(token)
            finally:
                if sampler is not None:
                    sampler.cancel()
                    await asyncio.gather(sampler, return_exceptions=True)
                await source.stop()

    async def _sample(self, source: MqttSource) -> None:
        """Measure the sensor topics' rate over each subscribed window; above ``max_rate``,
        unsubscribe them for the rest of the period (module docstring)."""
        view = self.view
        on = {flt: 0 for flt in self.filters}
        off = {flt: 0 for flt in self.alert_filters}
        share, period, subscribed = 1.0, SAMPLE_PERIOD, True
        while True:
            again = view.redelivered
            if not subscribed:
                if not await self._resubscribe(source, on):
                    await asyncio.sleep(period)
                    continue
                subscribed = True
            start, t0 = view.sample_start(), time.monotonic()
            await asyncio.sleep(max(0.5, period * share))
            rate = view.sample_end(start, time.monotonic() - t0)
            self.uns_rate = rate
            share = min(1.0, max(MIN_SHARE, self.max_rate / rate)) if rate > 0 else 1.0
            # Retained messages sent again at the subscription: at most half the budget.
            period = min(MAX_PERIOD, max(SAMPLE_PERIOD,
                                         (view.redelivered - again) / (self.max_rate / 2)))
            view.sampling = share
            if share >= 1.0 or not await self._resubscribe(source, off):
                continue
            subscribed = False
            await asyncio.sleep(period * (1 - share))

    async def _resubscribe(self, source: MqttSource, filters: dict[str, int]) -> bool:
        try:
            await source.update_subscriptions(filters)
        except UnsflowError as exc:
            log.warning("[dashboard] cannot change the subscriptions (%s); trying again", exc)
            return False
        return True
