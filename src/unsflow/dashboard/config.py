"""What ``unsflow dashboard`` shows, mostly read off the pipeline configs it is given.

From each pipeline config (``--config``, repeatable; validated as ``unsflow
validate`` does, nothing connects):

- the UNS broker (host, port, TLS, credential reference) and the topic
  filters to subscribe to: the config's subscriptions, with any
  ``$share/GROUP/`` prefix removed (the dashboard must never join the
  pipeline's share group: it would take messages away from it);
- the alert topics: for every ``mqtt`` target whose processors include a
  ``threshold`` or a ``filter``, its topic template as a filter (a level with
  a ``{...}`` field becomes ``+``, ``{topic}`` becomes ``#``);
- the limit lines: each ``threshold`` processor with ``match: {sensor: S}``
  gives sensor S its ``above`` / ``below`` limits;
- the metrics URL: ``http://<http.host>:<http.port>/metrics`` (0.0.0.0 is
  asked on 127.0.0.1), unless ``http.port`` is 0;
- the data lakes: every ``s3`` target with ``local-path`` (plus its
  ``key-prefix``); relative paths are taken from the dashboard's working
  directory, as ``unsflow run`` takes them from its own.

Options add to or replace these (``unsflow dashboard --help``).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unsflow.config.models import PipelineConfig, SecretRef, TlsConfig
from unsflow.engine.topics import split_shared

__all__ = [
    "TOKEN_ENV",
    "DashboardConfig",
    "PipelineSource",
    "alert_filter",
    "covers",
    "from_pipelines",
    "is_loopback",
    "minimal_filters",
]

TOKEN_ENV = "UNSFLOW_DASHBOARD_TOKEN"


@dataclass(frozen=True)
class PipelineSource:
    """One pipeline the Pipeline page shows: its config file and its metrics endpoint."""

    name: str
    config_path: str | None
    metrics_url: str | None
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> type, processors
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DashboardConfig:
    """Everything the dashboard process needs; built by :func:`from_pipelines` and options."""

    broker_host: str = "localhost"
    broker_port: int = 1883
    broker_tls: TlsConfig | None = None
    broker_credential: SecretRef | None = None
    subscribe: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    pipelines: list[PipelineSource] = field(default_factory=list)
    lakes: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8050
    token: str | None = None
    update_interval: float = 1.0  # seconds between two updates sent to a page
    points_per_second: float = 2.0  # most chart points kept per sensor and second
    history: int = 300  # points per chart
    scrape_interval: float = 1.0  # seconds between two reads of a pipeline's /metrics
    max_rate: float = 2000.0  # sensor messages per second read in full; above, sampled (0: all)
    max_topics: int = 20000


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach.

    >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "10.0.0.5")]
    [True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def alert_filter(template: str) -> str:
    """The topic filter matching what a topic template renders.

    >>> alert_filter("acme/alerts/{record[machine]}/{record[sensor]}")
    'acme/alerts/+/+'
    >>> alert_filter("{topic}/alerts")
    '#'
    """
    levels = []
    for level in template.split("/"):
        if "{topic}" in level:
            levels.append("#")
            break
        levels.append("+" if "{" in level else level)
    return "/".join(levels)


def covers(a: str, b: str) -> bool:
    """True when filter ``a`` matches every topic filter ``b`` matches.

    >>> covers("a/+/+", "a/+/vibration"), covers("a/#", "a/b/#"), covers("a/+", "a/#")
    (True, True, False)
    """
    al, bl = a.split("/"), b.split("/")
    for i, x in enumerate(al):
        if x == "#":
            return True
        if i >= len(bl):
            return False
        y = bl[i]
        if y == "#" or (x != "+" and (y == "+" or x != y)):
            return False
    return len(al) == len(bl)


def minimal_filters(filters: list[str]) -> list[str]:
    """``filters`` without those another one covers. Overlapping subscriptions would make
    the broker deliver a message once per filter it matches (Mosquitto does).

    >>> minimal_filters(["a/+/+", "a/+/vibration", "b/#", "a/+/+"])
    ['a/+/+', 'b/#']
    """
    out: list[str] = []
    for flt in filters:
        if flt not in out and not any(other != flt and covers(other, flt) for other in filters):
            out.append(flt)
    return out


def _http_url(cfg: PipelineConfig) -> str | None:
    if not cfg.http.port:
        return None
    host = cfg.http.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.http.port}/metrics"


def from_pipelines(paths: list[str], configs: list[PipelineConfig]) -> DashboardConfig:
    """The dashboard config read off pipeline configs (module docstring)."""
    out = DashboardConfig()
    broker_set = False
    for path, cfg in zip(paths, configs, strict=True):
        if cfg.subscriptions and not broker_set:
            b = cfg.mqtt_broker
            out.broker_host = b.host or "localhost"
            out.broker_port = b.port or (8883 if b.tls else 1883)
            out.broker_tls = b.tls
            out.broker_credential = cfg.mqtt_broker_credential
            broker_set = True
        for flt in cfg.subscriptions:
            plain = split_shared(flt)[1]
            if plain not in out.subscribe:
                out.subscribe.append(plain)
        targets: dict[str, dict[str, Any]] = {}
        for name, tcfg in cfg.targets.items():
            info: dict[str, Any] = {"type": tcfg.type, "processors": list(tcfg.processors)}
            kinds = {cfg.processors[p].type for p in tcfg.processors if p in cfg.processors}
            if tcfg.type == "mqtt" and kinds & {"threshold", "filter"}:
                flt = alert_filter(getattr(tcfg, "topic", "") or "")
                if flt and flt not in out.alerts:
                    out.alerts.append(flt)
            local = getattr(tcfg, "local_path", None)
            if tcfg.type == "s3" and local:
                root = os.path.join(local, getattr(tcfg, "key_prefix", "") or "")
                root = str(Path(root).resolve())
                info["lake"] = root
                if root not in out.lakes:
                    out.lakes.append(root)
            targets[name] = info
        for pcfg in cfg.processors.values():
            if pcfg.type != "threshold":
                continue
            sensor = getattr(pcfg, "match", {}).get("sensor")
            if isinstance(sensor, str):
                above, below = out.limits.get(sensor, (None, None))
                out.limits[sensor] = (getattr(pcfg, "above", None) if above is None else above,
                                      getattr(pcfg, "below", None) if below is None else below)
        subs = {flt: {"qos": s.qos, "targets": s.target_names}
                for flt, s in cfg.subscriptions.items()}
        for sname, scfg in cfg.sources.items():
            subs[f"source {sname}"] = {"qos": None, "targets": scfg.target_names,
                                       "type": scfg.type}
        out.pipelines.append(PipelineSource(Path(path).stem, str(Path(path).resolve()),
                                            _http_url(cfg), targets, subs))
    return out
