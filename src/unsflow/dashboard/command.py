"""The ``unsflow dashboard`` command (registered in :mod:`unsflow.cli`). Thin: see
:mod:`unsflow.dashboard`."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from unsflow.dashboard.config import TOKEN_ENV
from unsflow.errors import ConfigError, MissingDependency, SecretError, UnsflowError

if TYPE_CHECKING:
    from unsflow.dashboard.config import DashboardConfig
    from unsflow.dashboard.redact import Scrubber

__all__ = ["build_config", "dashboard_command", "parse_limit"]


def parse_limit(text: str) -> tuple[str, float | None, float | None]:
    """``SENSOR=HIGH`` or ``SENSOR=LOW:HIGH`` -> (sensor, above, below).

    >>> parse_limit("vibration=30"), parse_limit("temperature=45:55")
    (('vibration', 30.0, None), ('temperature', 55.0, 45.0))
    """
    sensor, sep, rest = text.partition("=")
    low, colon, high = rest.partition(":")
    try:
        if not sep or not sensor:
            raise ValueError
        if colon:
            return sensor, float(high) if high else None, float(low) if low else None
        return sensor, float(rest), None
    except ValueError:
        raise click.BadParameter(f"expected SENSOR=HIGH or SENSOR=LOW:HIGH, found {text!r}",
                                 param_hint="--limit") from None


def _broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, found {text!r}", param_hint="--broker")
    return host.strip("[]"), int(port)


def build_config(configs: list[str], scrubber: Scrubber, *, broker: str | None = None,
                 subscribe: Sequence[str] = (), alerts: Sequence[str] = (),
                 metrics_url: Sequence[str] = (), lakes: Sequence[str] = (),
                 limits: Sequence[str] = ()) -> DashboardConfig:
    """The dashboard config from pipeline config files and the options (the command's).

    Every secret-looking value of the files is told to ``scrubber``. Raises
    :class:`ConfigError` for a config that does not validate.
    """
    from pathlib import Path

    import yaml

    from unsflow.config import load_config
    from unsflow.dashboard.config import DashboardConfig, PipelineSource, from_pipelines
    from unsflow.dashboard.redact import redact

    loaded = []
    for path in configs:
        loaded.append(load_config(path))
        redact(yaml.safe_load(Path(path).read_text(encoding="utf-8")), scrubber)
    config = from_pipelines(configs, loaded) if configs else DashboardConfig()
    if not configs:
        config.broker_host, config.broker_port = _broker(
            f"{os.environ.get('EDGE_BROKER_HOST') or 'localhost'}:"
            f"{os.environ.get('EDGE_MQTT_PORT') or 1883}")
    if broker:
        config.broker_host, config.broker_port = _broker(broker)
    if subscribe:
        config.subscribe = list(subscribe)
    config.alerts += [a for a in alerts if a not in config.alerts]
    for i, url in enumerate(metrics_url):
        if i < len(config.pipelines):
            config.pipelines[i] = dataclasses.replace(config.pipelines[i], metrics_url=url)
        else:
            config.pipelines.append(PipelineSource(f"pipeline-{i + 1}", None, url))
    config.lakes += [str(Path(p).resolve()) for p in lakes
                     if str(Path(p).resolve()) not in config.lakes]
    for text in limits:
        sensor, above, below = parse_limit(text)
        config.limits[sensor] = (above, below)
    return config


@click.command("dashboard")
@click.option("--config", "configs", multiple=True, type=click.Path(dir_okay=False),
              help="A pipeline config (repeatable): its broker, subscriptions, alert topics, "
              "limits, /metrics and lake are what the dashboard shows.")
@click.option("--broker", default=None, help="HOST:PORT of the UNS broker (default: the first "
              "config's mqtt-broker, else EDGE_BROKER_HOST/EDGE_MQTT_PORT or localhost:1883).")
@click.option("--subscribe", multiple=True, metavar="FILTER",
              help="Topic filter to watch, e.g. '#' (repeatable; replaces the configs' "
              "subscriptions).")
@click.option("--alerts", multiple=True, metavar="FILTER",
              help="Topic filter of alert messages (repeatable; adds to those read off the "
              "configs' mqtt targets).")
@click.option("--metrics-url", multiple=True, metavar="URL",
              help="A pipeline's /metrics (repeatable): the first ones replace the URLs read "
              "off the --config files, in order (a pipeline in another pod or host); more "
              "are pipelines of their own.")
@click.option("--lake", "lakes", multiple=True, type=click.Path(file_okay=False),
              help="A local lake directory (repeatable; adds to the configs' s3 targets).")
@click.option("--limit", "limits", multiple=True, metavar="SENSOR=HIGH|SENSOR=LOW:HIGH",
              help="A limit line for a sensor (repeatable; adds to the configs' thresholds).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --token.")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", default=None, envvar=TOKEN_ENV, show_envvar=True,
              help="Access token every request must carry (Bearer header, cookie, or once "
              "?token=).")
@click.option("--update-interval", default=1.0, show_default=True,
              type=click.FloatRange(0.1, 60), help="Seconds between two updates of a page.")
@click.option("--nice", "niceness", default=10, show_default=True, type=click.IntRange(0, 19),
              help="Lower this process's CPU priority by this much, so that on a shared "
              "machine the pipeline wins every contest for CPU (0: leave it).")
@click.option("--max-rate", default=2000.0, show_default=True, type=click.FloatRange(0),
              help="Sensor messages per second read in full; above, the sensor topics are "
              "sampled (subscribed part of the time; alerts always). 0: read everything.")
@click.option("--points", default=300, show_default=True, type=click.IntRange(10, 100000),
              help="Points kept per chart.")
def dashboard_command(configs: tuple[str, ...], broker: str | None, subscribe: tuple[str, ...],
                      alerts: tuple[str, ...], metrics_url: tuple[str, ...],
                      lakes: tuple[str, ...], limits: tuple[str, ...], host: str, port: int,
                      token: str | None, update_interval: float, niceness: int,
                      max_rate: float, points: int) -> None:
    """Serve the live line dashboard until SIGINT or SIGTERM.

    It subscribes to the UNS itself (QoS 0, never the pipeline's session or
    share group), reads each pipeline's /metrics and config file, and lists
    the lake's Parquet objects: a process of its own that cannot slow the
    pipeline down.
    """
    from unsflow.dashboard import run_dashboard
    from unsflow.dashboard.redact import Scrubber, ScrubFilter

    if niceness:
        os.nice(niceness)
    scrubber = Scrubber()
    for handler in logging.getLogger().handlers:
        handler.addFilter(ScrubFilter(scrubber))
    try:
        config = build_config(list(configs), scrubber, broker=broker, subscribe=subscribe,
                              alerts=alerts, metrics_url=metrics_url, lakes=lakes,
                              limits=limits)
    except ConfigError as exc:
        click.echo(scrubber.scrub(str(exc)), err=True)
        sys.exit(2)
    config.host, config.port, config.token = host, port, token
    config.update_interval, config.history = update_interval, points
    config.max_rate = max_rate

    def started() -> None:
        shown = f"[{host}]" if ":" in host else host
        note = " (needs the access token)" if token else ""
        click.echo(f"unsflow dashboard: http://{shown}:{port}/{note}", err=True)

    try:
        run_dashboard(config, scrubber, started)
    except (SecretError, MissingDependency, UnsflowError) as exc:
        click.echo(f"unsflow dashboard: {scrubber.scrub(str(exc))}", err=True)
        sys.exit(1)
