"""The ``unsflow demo`` command (registered in :mod:`unsflow.cli`). Thin: see :mod:`unsflow.demo`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["demo_command"]


@click.command("demo")
@click.option("--dir", "directory", default="unsflow-demo", show_default=True,
              type=click.Path(file_okay=False),
              help="Where the demo keeps its configs, lake, models and logs (reused by the "
              "next run).")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(1, 65535),
              help="The dashboard's port on 127.0.0.1.")
@click.option("--broker", default=None, metavar="HOST:PORT",
              help="Use this MQTT broker instead of starting the project's Mosquitto.")
@click.option("--prefix", default="", help="Put in front of every topic (to share a broker).")
@click.option("--kafka", is_flag=True,
              help="The Red Hat topology: MQTT -> Kafka (scripts/services.sh up kafka) -> lake.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60),
              help="Seconds between two readings of a sensor.")
def demo_command(directory: str, port: int, broker: str | None, prefix: str, kafka: bool,
                 interval: float) -> None:
    """Run the whole line on this machine: broker, simulator, model, pipeline, dashboard.

    Prints the dashboard's URL, then how to switch the temperature sensors on
    by editing the demo's sensors.yaml. Ctrl-C stops everything and keeps the
    lake; the next run goes on with it.
    """
    from unsflow.demo import Demo, DemoOptions

    address = None
    if broker:
        host, sep, p = broker.rpartition(":")
        if not sep or not host or not p.isdigit():
            raise click.BadParameter(f"expected HOST:PORT, found {broker!r}",
                                     param_hint="--broker")
        address = (host, int(p))
    demo = Demo(DemoOptions(Path(directory), port=port, broker=address, prefix=prefix,
                            kafka=kafka, interval=interval))
    sys.exit(demo.run())
