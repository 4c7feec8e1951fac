"""The ``unsflow`` command. Thin: parses arguments and calls library functions."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time

import click

from unsflow.errors import ConfigError, MissingDependency, SecretError, UnsflowError

__all__ = ["main"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # gmqtt logs every reconnect attempt at WARNING; ours say it once with context.
    logging.getLogger("unsflow.sources.mqtt.gmqtt").setLevel(logging.ERROR)
    logging.getLogger("gmqtt").setLevel(logging.WARNING)
    # One line per HTTP request would drown the log at edge message rates.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@click.group()
@click.version_option(package_name="unsflow")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]))
def main(log_level: str, log_format: str) -> None:
    """unsflow: edge ingestion for the manufacturing Unified Namespace."""
    _setup_logging(log_level, log_format)


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
def run(config: str | None) -> None:
    """Run the pipeline of CONFIG (JSON or YAML) until SIGINT or SIGTERM.

    Without CONFIG the pipeline comes from EDGE_SUBSCRIPTION_CONFIG (inline JSON),
    as in the reference Kubernetes manifest; EDGE_BROKER_HOST and EDGE_MQTT_PORT
    name the UNS broker.
    """
    from unsflow.config import load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    try:
        _run_loop(_run(cfg))
    except (SecretError, MissingDependency, UnsflowError) as exc:
        click.echo(f"unsflow: {exc}", err=True)
        sys.exit(1)


def _run_loop(coro: object) -> None:
    try:
        import uvloop  # optional: a faster event loop where installed

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


async def _run(cfg: object) -> None:
    from unsflow.engine.pipeline import Pipeline

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pipeline = Pipeline(cfg)  # type: ignore[arg-type]
    await pipeline.run(stop)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
def validate(config: str) -> None:
    """Check CONFIG without connecting to anything; print every error."""
    from unsflow.config import load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(f"{config}: ok ({len(cfg.subscriptions)} subscription(s), "
               f"{len(cfg.targets)} target(s), {len(cfg.processors)} processor(s))")


@main.command()
def schema() -> None:
    """Print the JSON Schema of the config."""
    from unsflow.config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
