"""OPC UA source: monitored items of one server, as records on UNS topics.

Guarantees and limits:

- One subscription per source, one monitored item per configured node (by node
  id or browse path), with its sampling interval, queue size and deadband. Each
  data change becomes one message, the record::

      {"node_id": "ns=2;s=Line1/Temperature", "browse_name": "Temperature",
       "name": "line1/temperature", "value": 21.5, "datatype": "Double",
       "source_timestamp": 1700000000000, "server_timestamp": 1700000000003,
       "status": "Good", "status_code": 0}

  on the topic of the ``topic`` template. Timestamps are epoch milliseconds.
  With ``value-columns: typed`` the value goes to value_int, value_float,
  value_bool, value_string or value_json (docs/components/opcua.md).
- Reconnects by itself (asyncua's supervisor): after a network break it
  re-activates its session and transfers the subscription, and asks the server
  to republish the notifications it had not acknowledged, so values the
  server kept in its queues arrive. After a server restart (the session is
  gone) the subscription and its items are created anew.
- Backpressure: when ``max-pending`` messages are not acknowledged by the
  engine, the source turns publishing off; the server keeps sampling into the
  items' queues (``queue-size`` values each, oldest discarded first) and
  publishing is turned on again when half is acknowledged.
- OPC UA has no redelivery of notifications the client acknowledged. asyncua
  acknowledges a notification to the server once it reached this source's
  queue; a process killed before the targets wrote it loses those values (the
  server still holds each node's current value).
- Bad input is reported and left out, the rest goes on: a node unknown to the
  server, a path that matches nothing, a node that is not a variable, or whose
  data type is a server-specific structure unsflow cannot decode (set
  ``load-type-definitions`` to decode the server's own structures) is logged
  with the node and the server, counted in ``unsflow_opcua_bad_nodes`` and not
  monitored. A server that refuses the login is logged (naming the server and
  the user) and tried again with backoff; ``/readyz`` says not ready meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Self

import orjson
from pydantic import Field, field_validator, model_validator

from unsflow._deps import require
from unsflow.codecs import value_column
from unsflow.config.models import Model, SecretRef, SourceConfig
from unsflow.engine.acks import InOrderAcks
from unsflow.engine.topics import check_fields, topic_problem
from unsflow.errors import ComponentError, SecretError
from unsflow.message import Message
from unsflow.sources._opcua_values import epoch_ms, opcua_value, status_name
from unsflow.sources.base import Source

__all__ = ["OpcuaNodeConfig", "OpcuaSource", "OpcuaSourceConfig", "opcua_value"]

log = logging.getLogger("unsflow.sources.opcua")
_CANCEL_EVERY = 0.5  # seconds stop() waits before cancelling the connect loop again

_TOPIC_FIELDS = {"name", "browse_name", "node_id", "namespace", "identifier"}
_CHUNK = 1000  # nodes per Read / CreateMonitoredItems call (servers cap both)
_LOGIN_ERRORS = {"BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid",
                 "BadCertificateUntrusted", "BadCertificateInvalid", "BadSecurityChecksFailed"}


class OpcuaNodeConfig(Model):
    """One node to monitor: by node id or by browse path."""

    node_id: str | None = Field(None, description="Node id, e.g. ns=2;s=Line1/Temperature or "
                                "ns=3;i=1001.")
    browse_path: str | None = Field(
        None, description="Browse path from the Objects folder, levels as "
        "NAMESPACE-INDEX:BrowseName separated by /, e.g. 2:Plant/2:Line1/2:Temperature.")
    name: str | None = Field(None, description="{name} of the topic template and `name` of the "
                             "record; default: the browse path's names joined by /, or the "
                             "node's browse name.")
    sampling_interval: float | None = Field(None, ge=0, description="Milliseconds; default the "
                                            "source's sampling-interval.")
    queue_size: int | None = Field(None, ge=1, description="Values the server queues for this "
                                   "item between publishes; default the source's queue-size.")
    deadband: float | None = Field(None, ge=0, description="Report a numeric change only when "
                                   "it exceeds this (absolute, or percent of the EU range).")
    deadband_type: Literal["absolute", "percent"] = Field("absolute",
                                                          description="Kind of deadband.")

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("exactly one of node-id and browse-path must be set")
        return self


class OpcuaSourceConfig(SourceConfig):
    """Monitored items of one OPC UA server."""

    type: Literal["opcua"] = Field(description="Source type: an OPC UA server.")
    endpoint: str = Field(pattern=r"^opc\.tcp://", description="Server endpoint, e.g. "
                          "opc.tcp://plc-1.plant.local:4840.")
    security_policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep",
                             "Aes256_Sha256_RsaPss"] = Field("None", description="Security policy.")
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = Field(
        "None", description="Message security mode (None only with security-policy None).")
    credential: SecretRef | None = Field(None, description="User name and password login; "
                                         "default anonymous.")
    certificate: SecretRef | None = Field(
        None, description="The client's application certificate: a secret whose username is "
        "the application URI in the certificate and whose extra fields certificate and "
        "private-key hold PEM text. Default with a security policy: a self-signed certificate "
        "made at first start under certificate-dir (the server must trust it).")
    certificate_dir: str = Field("./unsflow-opcua-pki", description="Where the self-signed "
                                 "client certificate is kept.")
    application_uri: str = Field("urn:unsflow:opcua-client", description="Application URI of "
                                 "the self-signed certificate.")
    nodes: list[OpcuaNodeConfig] = Field(min_length=1, description="Nodes to monitor.")
    publishing_interval: float = Field(1000.0, gt=0, description="Milliseconds between two "
                                       "notification messages of the subscription.")
    sampling_interval: float = Field(250.0, ge=0, description="Milliseconds between two "
                                     "samples of an item (0: as fast as the server can).")
    queue_size: int = Field(10, ge=1, description="Values queued per item between publishes.")
    topic: str = Field("opcua/{name}", description="Topic template of each value: {name}, "
                       "{browse_name}, {node_id}, {namespace}, {identifier}.")
    value_columns: Literal["single", "typed"] = Field(
        "single", description="single: the value in `value`; typed: in value_int, value_float, "
        "value_bool, value_string or value_json by type.")
    load_type_definitions: bool = Field(
        False, description="Read the server's own structure definitions at connect so that "
        "values of those types decode (to JSON objects).")
    max_pending: int = Field(100000, ge=1, description="Messages not yet acknowledged by the "
                             "engine before publishing is paused.")
    batch_size: int = Field(5000, ge=1, description="Most messages in one batch.")
    request_timeout: float = Field(10.0, gt=0, description="Seconds an OPC UA request may take.")
    reconnect_max: float = Field(30.0, gt=0, description="Longest wait between two connection "
                                 "attempts, seconds.")

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        check_fields(value, _TOPIC_FIELDS)
        return value

    @model_validator(mode="after")
    def _security(self) -> Self:
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError("security-policy None goes with security-mode None, and only then")
        return self


@dataclasses.dataclass
class _Item:
    """A monitored node: what its records and topic say."""

    node_id: str
    browse_name: str
    name: str
    topic: str
    config: OpcuaNodeConfig


class OpcuaSource(Source[OpcuaSourceConfig]):
    """Subscribes to ``nodes`` of ``endpoint`` (see the module docstring)."""

    config_class = OpcuaSourceConfig
    # OPC UA has no redelivery of acknowledged notifications (see the module docstring).
    redelivers = False

    def __init__(self, component_id: str, config: OpcuaSourceConfig, context: Any) -> None:
        super().__init__(component_id, config, context)
        self._client: Any = None
        self._sub: Any = None
        self._items: dict[Any, _Item] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._batches: deque[tuple[list[Message], int]] = deque()
        self._batch_ready = asyncio.Event()
        self._acks: InOrderAcks[int] = InOrderAcks()
        self._pending = 0
        self._paused = False
        self._resume = asyncio.Event()
        self._error: BaseException | None = None
        self.received = 0
        self.acked = 0
        self.reconnects = 0
        self.pauses = 0  # times publishing was turned off for backpressure
        self.bad_nodes: dict[str, str] = {}  # configured node -> why it is not monitored
        self.subscribed = 0

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Check the extra and the secrets; connect in the background (a server that is down
        or refuses the login must not stop the pipeline)."""
        _asyncua()
        self._login = await self._resolve_login()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"opcua:{self.id}")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        # Cancel until the task has ended: on Python 3.11 a cancellation that arrives as an
        # inner wait_for completes can be lost (asyncua's connect has such waits), and one
        # lost cancel left the retry loop running and stop() waiting for it, for minutes.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=_CANCEL_EVERY)
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.disconnect(), self.config.request_timeout)
            except Exception as exc:  # noqa: BLE001 - closing: report and go on
                log.warning("[%s] disconnecting from %s: %s", self.id, self.config.endpoint, exc)

    def describe_endpoint(self) -> str:
        return self.config.endpoint

    @property
    def ready(self) -> bool:
        client = self._client
        if client is None or self._sub is None:
            return False
        return str(getattr(client.state, "value", client.state)).lower() == "connected"

    # -- connecting ----------------------------------------------------------------

    async def _resolve_login(self) -> dict[str, Any]:
        c = self.config
        login: dict[str, Any] = {}
        if c.credential is not None:
            cred = await self.context.resolve_secret(c.credential)
            login["username"], login["password"] = cred.username, cred.password
        if c.certificate is not None:
            cred = await self.context.resolve_secret(c.certificate)
            cert = cred.extra.get("certificate")
            key = cred.extra.get("private_key") or cred.extra.get("private-key")
            if not isinstance(cert, str) or not isinstance(key, str):
                raise SecretError(f"secret {c.certificate.secret_name!r}: expected 'certificate' "
                                  f"and 'private_key' (PEM text) besides 'username' (the "
                                  f"application URI)")
            from asyncua.crypto import uacrypto
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            try:
                x509.load_pem_x509_certificate(cert.encode())
                load_pem_private_key(key.encode(), None)
            except (ValueError, TypeError) as exc:
                raise SecretError(f"secret {c.certificate.secret_name!r}: 'certificate' and "
                                  f"'private_key' must be PEM text (an unencrypted key): "
                                  f"{exc}") from None
            login["application_uri"] = cred.username
            login["certificate"] = uacrypto.CertProperties(cert.encode(), extension="pem")
            login["private_key"] = uacrypto.CertProperties(key.encode(), extension="pem")
        return login

    async def _client_for(self) -> Any:
        asyncua = _asyncua()
        from asyncua import ua
        from asyncua.crypto import security_policies

        c = self.config
        # The supervisor probes the server every watchdog interval and calls a probe slower
        # than that interval a lost connection: at asyncua's 1 s, a busy edge box reconnects
        # for nothing (measured: 3 false reconnects a minute at load 10 on 2 cores).
        client = asyncua.Client(c.endpoint, timeout=c.request_timeout, auto_reconnect=True,
                                reconnect_max_delay=c.reconnect_max,
                                watchdog_intervall=c.request_timeout)
        client.connection_lost_callback = self._on_connection_lost
        if "username" in self._login:
            client.set_user(self._login["username"])
            if self._login["password"] is not None:
                client.set_password(self._login["password"])
        if c.security_policy != "None":
            policy = getattr(security_policies, f"SecurityPolicy{c.security_policy}")
            mode = getattr(ua.MessageSecurityMode, c.security_mode)
            if "certificate" in self._login:
                client.application_uri = self._login["application_uri"]
                cert, key = self._login["certificate"], self._login["private_key"]
            else:
                client.application_uri = c.application_uri
                pki = Path(c.certificate_dir)
                cert, key = await client.setup_self_signed_certificate(
                    pki / "unsflow-client.key.pem", pki / "unsflow-client.der",
                    host_name="localhost")
            await client.set_security(policy, cert, key, mode=mode)
        return client

    async def _run(self) -> None:
        delay = 0.5
        while not self._stopping:
            client = None
            try:
                client = await self._client_for()
                await client.connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure to connect is retried
                self._report_connect_error(exc, delay)
                if client is not None:
                    # Only the socket: there is no session or channel to close politely,
                    # and asyncua logs a traceback for each one it cannot close.
                    _close_socket(client)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max)
                continue
            self._client = client
            log.info("[%s] connected to OPC UA server %s", self.id, self.config.endpoint)
            try:
                await self._subscribe(client)
                await self._pump()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken session: start over
                log.error("[%s] OPC UA server %s: %s; connecting again", self.id,
                          self.config.endpoint, _why(exc))
                self._client, self._sub = None, None
                await _quiet_disconnect(client)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max)

    def _report_connect_error(self, exc: BaseException, delay: float) -> None:
        why = _why(exc)
        if any(code in why for code in _LOGIN_ERRORS):
            user = self._login.get("username")
            who = f"user {user!r}" if user else "an anonymous login"
            log.error("[%s] OPC UA server %s refused %s: %s; trying again in %.0fs", self.id,
                      self.config.endpoint, who, why, delay)
        else:
            log.error("[%s] cannot connect to OPC UA server %s: %s; trying again in %.1fs",
                      self.id, self.config.endpoint, why, delay)

    async def _on_connection_lost(self, exc: Exception) -> None:
        self.reconnects += 1
        log.warning("[%s] connection to OPC UA server %s lost (%s); reconnecting and restoring "
                    "the subscription", self.id, self.config.endpoint, _why(exc))

    # -- the subscription ---------------------------------------------------------------

    async def _subscribe(self, client: Any) -> None:
        from asyncua import ua
        from asyncua.common.subscription import OverflowPolicy

        c = self.config
        if c.load_type_definitions:
            await client.load_data_type_definitions()
        items = await self._resolve(client)
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = c.publishing_interval
        params.RequestedLifetimeCount = 10000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(c.publishing_interval)
        params.MaxNotificationsPerPublish = 10000
        params.PublishingEnabled = True
        params.Priority = 0
        # The queue between asyncua's publish loop and _pump: large enough for what the
        # server sends between a pause and its taking effect (WARN logs if ever exceeded).
        sub = await client.create_subscription(params, None, queue_maxsize=max(200000,
                                               4 * c.batch_size), overflow=OverflowPolicy.WARN)
        if not isinstance(getattr(sub, "_event_queue", None), asyncio.Queue):
            raise ComponentError("asyncua's Subscription has no _event_queue any more: this "
                                 "asyncua version is not supported", component_id=self.id)
        self._sub = sub
        requests: list[tuple[_Item, Any]] = []
        for handle, (node, item) in enumerate(items, start=1):
            requests.append((item, self._request(node, item.config, handle)))
        subscribed = 0
        for start in range(0, len(requests), _CHUNK):
            chunk = requests[start:start + _CHUNK]
            results = await sub.create_monitored_items([r for _, r in chunk])
            for (item, _), result in zip(chunk, results):
                if isinstance(result, ua.StatusCode):
                    self._bad(item.config, f"the server refused to monitor it ({result.name})")
                else:
                    subscribed += 1
        self.subscribed = subscribed
        log.info("[%s] monitoring %d node(s) of %s (publishing every %g ms)%s", self.id,
                 subscribed, c.endpoint, c.publishing_interval,
                 f"; {len(self.bad_nodes)} not monitored" if self.bad_nodes else "")

    def _request(self, node: Any, cfg: OpcuaNodeConfig, handle: int) -> Any:
        from asyncua import ua

        c = self.config
        rv = ua.ReadValueId()
        rv.NodeId = node.nodeid
        rv.AttributeId = ua.AttributeIds.Value
        mp = ua.MonitoringParameters()
        mp.ClientHandle = handle
        mp.SamplingInterval = cfg.sampling_interval if cfg.sampling_interval is not None \
            else c.sampling_interval
        mp.QueueSize = cfg.queue_size or c.queue_size
        mp.DiscardOldest = True
        if cfg.deadband is not None:
            mp.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=ua.DeadbandType.Absolute if cfg.deadband_type == "absolute"
                else ua.DeadbandType.Percent, DeadbandValue=cfg.deadband)
        req = ua.MonitoredItemCreateRequest()
        req.ItemToMonitor = rv
        req.MonitoringMode = ua.MonitoringMode.Reporting
        req.RequestedParameters = mp
        return req

    async def _resolve(self, client: Any) -> list[tuple[Any, _Item]]:
        """The configured nodes that exist, are variables and have a type we can store."""
        from asyncua import ua

        self.bad_nodes.clear()
        found: list[tuple[Any, OpcuaNodeConfig]] = []
        for cfg in self.config.nodes:
            try:
                if cfg.node_id is not None:
                    found.append((client.get_node(ua.NodeId.from_string(cfg.node_id)), cfg))
                else:
                    path = [p for p in cfg.browse_path.split("/") if p]  # type: ignore[union-attr]
                    found.append((await client.nodes.objects.get_child(path), cfg))
            except (ValueError, ua.UaError) as exc:
                self._bad(cfg, f"not found ({_why(exc)})")
        items: list[tuple[Any, _Item]] = []
        type_ok: dict[Any, str | None] = {}
        for start in range(0, len(found), _CHUNK):
            chunk = found[start:start + _CHUNK]
            nodes = [n for n, _ in chunk]
            classes = await client.read_attributes(nodes, ua.AttributeIds.NodeClass)
            names = await client.read_attributes(nodes, ua.AttributeIds.BrowseName)
            types = await client.read_attributes(nodes, ua.AttributeIds.DataType)
            for (node, cfg), ncls, bname, dtype in zip(chunk, classes, names, types):
                if not bname.StatusCode.is_good():
                    self._bad(cfg, f"unknown to the server ({bname.StatusCode.name})")
                    continue
                node_class = ua.NodeClass(ncls.Value.Value)
                if node_class != ua.NodeClass.Variable:
                    self._bad(cfg, f"is a{'n' if node_class.name[0] in 'AEIOU' else ''} "
                                   f"{node_class.name}, not a Variable")
                    continue
                datatype = dtype.Value.Value
                if datatype not in type_ok:
                    type_ok[datatype] = await self._type_problem(client, datatype)
                problem = type_ok[datatype]
                if problem:
                    self._bad(cfg, problem)
                    continue
                items.append((node, self._item(node, cfg, bname.Value.Value)))
        self._items = {node.nodeid: item for node, item in items}
        return items

    async def _type_problem(self, client: Any, datatype: Any) -> str | None:
        """Why values of ``datatype`` cannot go to the lake, or None."""
        from asyncua import ua
        from asyncua.common.ua_utils import get_base_data_type

        if datatype.NamespaceIndex == 0:
            return None  # built-in types and the standard's structures: asyncua decodes them
        try:
            base = await get_base_data_type(client.get_node(datatype))
        except (ua.UaError, ValueError) as exc:
            return (f"its data type {datatype.to_string()} is not a type unsflow can store "
                    f"({_why(exc)})")
        if base.nodeid.Identifier in (22, 12756) and datatype not in \
                ua.extension_objects_by_datatype:
            return (f"its data type {datatype.to_string()} is a server-specific structure "
                    f"unsflow cannot decode (set load-type-definitions to read its definition)")
        return None

    def _item(self, node: Any, cfg: OpcuaNodeConfig, browse_name: Any) -> _Item:
        node_id = node.nodeid.to_string()
        bname = browse_name.Name
        name = cfg.name
        if name is None and cfg.browse_path is not None:
            name = "/".join(p.partition(":")[2] or p for p in cfg.browse_path.split("/") if p)
        name = name or bname
        ident = str(node.nodeid.Identifier)
        topic = self.config.topic.format(name=name, browse_name=bname, node_id=node_id,
                                         namespace=node.nodeid.NamespaceIndex, identifier=ident)
        topic = "/".join(level for level in topic.split("/") if level)
        problem = topic_problem(topic)
        if problem:
            # A name with + or #: keep the node, make its topic valid.
            topic = topic.replace("+", "_").replace("#", "_")
        return _Item(node_id, bname, name, topic, cfg)

    def _bad(self, cfg: OpcuaNodeConfig, why: str) -> None:
        what = f"node {cfg.node_id}" if cfg.node_id else f"browse path {cfg.browse_path}"
        self.bad_nodes[cfg.node_id or cfg.browse_path or "?"] = why
        log.error("[%s] %s of OPC UA server %s: %s; not monitored", self.id, what,
                  self.config.endpoint, why)

    # -- notifications to batches ------------------------------------------------------------

    async def _pump(self) -> None:
        from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent

        queue: asyncio.Queue[Any] = self._sub._event_queue
        batch_size = self.config.batch_size
        while True:
            if self._paused:
                await self._resume.wait()
                await self._set_publishing(True)
            event = await queue.get()
            events = [event]
            while len(events) < batch_size and not queue.empty():
                events.append(queue.get_nowait())
            messages: list[Message] = []
            now = time.time()
            for ev in events:
                if ev is None:  # the subscription was deleted
                    raise ComponentError("subscription closed", component_id=self.id)
                if isinstance(ev, DataChangeEvent):
                    msg = self._message(ev, now)
                    if msg is not None:
                        messages.append(msg)
                elif isinstance(ev, StatusChangeEvent):
                    log.warning("[%s] OPC UA server %s: subscription status %s", self.id,
                                self.config.endpoint, ev.notification.Status)
            if messages:
                self._add(messages)
            if self._pending >= self.config.max_pending and not self._paused:
                await self._set_publishing(False)

    async def _set_publishing(self, on: bool) -> None:
        sub = self._sub
        self._paused = not on
        if not on:
            self.pauses += 1
        self._resume.clear()
        if sub is None:
            return
        try:
            await sub.set_publishing_mode(on)
        except Exception as exc:  # noqa: BLE001 - the session is being restored; asyncua retries
            log.warning("[%s] cannot turn publishing %s: %s", self.id, "on" if on else "off",
                        _why(exc))
            return
        log.info("[%s] publishing %s (%d messages wait for the targets)", self.id,
                 "resumed" if on else "paused", self._pending)

    def _message(self, ev: Any, now: float) -> Message | None:
        item = self._items.get(ev.node.nodeid)
        if item is None:
            return None
        dv = ev.data.monitored_item.Value
        variant = dv.Value
        raw = variant.Value if variant is not None else None
        if variant is None or variant.VariantType is None:
            datatype = None
        else:
            datatype = variant.VariantType.name + ("[]" if isinstance(raw, list) else "")
        status = dv.StatusCode
        code = int(status.value) if status is not None else 0
        record: dict[str, Any] = {
            "node_id": item.node_id, "browse_name": item.browse_name, "name": item.name,
            "datatype": datatype,
            "source_timestamp": epoch_ms(dv.SourceTimestamp),
            "server_timestamp": epoch_ms(dv.ServerTimestamp),
            "status": status_name(code), "status_code": code,
        }
        value = opcua_value(raw)
        if self.config.value_columns == "typed":
            if value is not None:
                column, stored = value_column(value)
                record[column] = stored
        else:
            record["value"] = value
        return Message(item.topic, orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS), 0,
                       False, now, None, record=record, source_id=self.id)

    def _add(self, messages: list[Message]) -> None:
        token = self._acks.add(len(messages))
        self._batches.append((messages, token))
        self._pending += len(messages)
        self.received += len(messages)
        self._batch_ready.set()

    # -- engine side ------------------------------------------------------------------------

    async def read(self) -> tuple[list[Message], int]:
        while not self._batches:
            self._batch_ready.clear()
            await self._batch_ready.wait()
        return self._batches.popleft()

    def ack(self, token: int) -> None:
        """Batch ``token`` is durable everywhere (see the module docstring for what OPC UA
        can and cannot redeliver)."""
        for count in self._acks.done(token):
            self._pending -= count
            self.acked += count
        if self._paused and self._pending <= self.config.max_pending // 2:
            self._resume.set()

    @property
    def in_flight(self) -> int:
        return self._pending

    def metric_samples(self) -> Iterator[tuple[str, list[str], float]]:
        yield "unsflow_opcua_reconnects_total", [self.id], self.reconnects
        yield "unsflow_opcua_bad_nodes", [self.id], len(self.bad_nodes)


def _asyncua() -> Any:
    return require("asyncua", "opcua")


def _why(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {text}" if text and name not in text else (text or name)


def _close_socket(client: Any) -> None:
    try:
        client.disconnect_socket()
    except Exception as exc:  # noqa: BLE001 - already broken; only the reason is of interest
        log.debug("closing a client that did not connect: %s", _why(exc))


async def _quiet_disconnect(client: Any) -> None:
    try:
        await asyncio.wait_for(client.disconnect(), 5)
    except Exception as exc:  # noqa: BLE001 - already broken; only the reason is of interest
        log.debug("disconnecting a broken client: %s", _why(exc))
