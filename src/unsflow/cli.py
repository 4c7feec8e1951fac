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

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_CONFIG"]

# Exit codes, one per kind of outcome, the same for every command (README, "Exit codes"):
EXIT_OK = 0       # done; also a run stopped by SIGINT/SIGTERM that drained in time
EXIT_FAILED = 1   # it ran and failed: a broker refused the login, a secret did not resolve,
                  # a component or the data failed (training data, a publish not acknowledged)
EXIT_CONFIG = 2   # what was given is wrong: an invalid config, a bad option or argument, a
                  # missing file (click's own usage errors are 2 as well)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Component messages start with the component's id: "[uns] connected to ...".
        message = entry["message"]
        if message.startswith("[") and "]" in message[:200]:
            entry["component"] = message[1:message.index("]")]
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
    # asyncua logs each connect attempt at INFO; the OPC UA source says it once with context.
    logging.getLogger("asyncua").setLevel(logging.WARNING)


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

    A change of CONFIG's content (checked every reload.interval seconds, and at
    once on SIGHUP) is validated and applied without a restart; an invalid one
    is logged and the running config stays.

    Without CONFIG the pipeline comes from EDGE_SUBSCRIPTION_CONFIG (inline JSON),
    as in the reference Kubernetes manifest; EDGE_BROKER_HOST and EDGE_MQTT_PORT
    name the UNS broker.
    """
    import hashlib
    import os

    from unsflow.config import load_config
    from unsflow.engine.reload import load_config_file

    try:
        if config is None:
            cfg = load_config(None)
            inline = os.environ.get("EDGE_SUBSCRIPTION_CONFIG", "").encode()
            config_hash = hashlib.sha256(inline).hexdigest()
        else:
            cfg, config_hash = load_config_file(config)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    _tune_gc()
    _limit_malloc_arenas()
    # Arrow's default allocator (mimalloc) keeps what a flush freed for itself: tens of MB
    # of RSS for nothing between flushes; the system allocator hands it back. Set before
    # pyarrow is first imported (the targets start below); an explicit setting wins.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    try:
        _run_loop(_run(cfg, config, config_hash))
    except (SecretError, MissingDependency, UnsflowError) as exc:
        click.echo(f"unsflow: {exc}", err=True)
        sys.exit(EXIT_FAILED)


def _tune_gc() -> None:
    """Fit the cyclic garbage collector to a stream: what start-up made (modules, classes,
    the config) is frozen, never scanned again, and the youngest generation is collected
    every 50,000 allocations instead of 700. Messages live from their socket read to the
    target's flush; with the default threshold every one was scanned several times on
    its way (measured: a fifth of the CPU per message of MQTT -> Parquet)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def _limit_malloc_arenas() -> None:
    """Two malloc arenas instead of glibc's up to eight per core: every worker thread that
    encodes a flush would otherwise keep what it freed in an arena of its own (measured:
    about 13 MiB less peak RSS draining a backlog). MALLOC_ARENA_MAX, when set, wins; a C
    library without mallopt (musl, macOS) is left alone."""
    import ctypes
    import os

    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _run_loop(coro: object) -> None:
    try:
        import uvloop  # optional: a faster event loop where installed

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


async def _run(cfg: object, path: str | None, config_hash: str) -> None:
    """The pipeline until SIGINT/SIGTERM; with a config file, its watcher (reload, SIGHUP)."""
    from unsflow.engine.pipeline import Pipeline
    from unsflow.engine.reload import ConfigWatcher

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pipeline = Pipeline(cfg)  # type: ignore[arg-type]
    pipeline.config_hash = config_hash
    if path is None:
        loop.add_signal_handler(signal.SIGHUP, logging.getLogger("unsflow.engine.reload").warning,
                                "SIGHUP: the config came from EDGE_SUBSCRIPTION_CONFIG; there "
                                "is no file to reload (a restart applies a new one)")
        await pipeline.run(stop)
        return
    watcher = ConfigWatcher(path, pipeline, config_hash)
    loop.add_signal_handler(signal.SIGHUP, watcher.trigger)
    watching = asyncio.create_task(watcher.run(), name="config-watcher")
    try:
        await pipeline.run(stop)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
def validate(config: str) -> None:
    """Check CONFIG without connecting to anything; print every error."""
    from unsflow.config import load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(f"{config}: ok ({len(cfg.subscriptions)} subscription(s), "
               f"{len(cfg.targets)} target(s), {len(cfg.processors)} processor(s))")


@main.group()
def session() -> None:
    """The persistent MQTT session a config keeps on its broker."""


@session.command("end")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--timeout", default=10.0, show_default=True,
              help="Seconds to wait for the broker's answer.")
def session_end(config: str | None, timeout: float) -> None:
    """End the persistent session of CONFIG's client id on its broker.

    A config with a fixed client-id and clean-start false keeps a session: the
    broker queues what its subscriptions match while unsflow is down. Stopping
    for good (a trial run, a retired config, a scaled-down replica)? End it, or
    the broker queues for nobody until the session expires. Run it while that
    pipeline is stopped. Without CONFIG, EDGE_SUBSCRIPTION_CONFIG.
    """
    from unsflow.config import load_config
    from unsflow.engine.session import end_session

    try:
        cfg = load_config(config)
        done = end_session(cfg, timeout=timeout)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    except (SecretError, UnsflowError) as exc:
        click.echo(f"unsflow session end: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if done.present:
        click.echo(f"ended the session of client id {done.client_id!r} on {done.broker}; "
                   "the broker dropped what it had queued for it")
    else:
        click.echo(f"no session of client id {done.client_id!r} on {done.broker}: nothing to end")


@main.group()
def deadletter() -> None:
    """Work with the dead-letter file (dead-letter.path of the config)."""


@deadletter.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="Pipeline config naming the UNS broker; default EDGE_SUBSCRIPTION_CONFIG.")
@click.option("--topic-prefix", default=None,
              help="Publish to PREFIX/<original topic> instead of the original topic.")
@click.option("--dry-run", is_flag=True, help="Read and check the file; publish nothing.")
@click.option("--keep", is_flag=True, help="Leave FILE as it is (default: rename it afterwards).")
@click.option("--timeout", default=120.0, show_default=True,
              help="Seconds to wait for the broker to acknowledge everything.")
def replay(file: str, config: str | None, topic_prefix: str | None, dry_run: bool, keep: bool,
           timeout: float) -> None:
    """Publish the messages of dead-letter FILE back to the UNS broker.

    Each payload goes out byte for byte to its topic, so it passes through the
    pipeline again. Lines that cannot be read are reported and skipped. After
    the replay FILE is renamed to FILE.replayed-<time> unless --keep or --dry-run.
    """
    from unsflow.config import load_config
    from unsflow.engine.replay import replay as run_replay

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    try:
        report = run_replay(file, cfg, topic_prefix=topic_prefix, dry_run=dry_run, keep=keep,
                            timeout=timeout)
    except FileNotFoundError as exc:
        click.echo(f"unsflow: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except (SecretError, UnsflowError) as exc:
        click.echo(f"unsflow: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    for line, why in report.skipped:
        click.echo(f"{file}:{line}: skipped: {why}", err=True)
    verb = "would publish" if dry_run else "published"
    click.echo(f"{file}: {report.entries} message(s) read, {verb} "
               f"{report.entries if dry_run else report.published}, "
               f"{len(report.skipped)} line(s) skipped")
    if report.renamed_to is not None:
        click.echo(f"{file}: renamed to {report.renamed_to}")


@main.command()
def schema() -> None:
    """Print the JSON Schema of the config."""
    from unsflow.config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Simulator config (JSON or YAML); watched for changes while running.")
@click.option("--host", envvar="EDGE_BROKER_HOST", help="MQTT broker host [EDGE_BROKER_HOST].")
@click.option("--port", type=int, envvar="EDGE_MQTT_PORT", help="MQTT broker port [EDGE_MQTT_PORT].")
@click.option("--interval", type=float, help="Seconds between readings of a sensor (default 5).")
@click.option("--style", type=click.Choice(["uns", "redhat"]),
              help="uns: enterprise/site/area/line/machine/sensor + JSON; redhat: "
              "iot-sensor/sw/SENSOR + CSV.")
@click.option("--seed", type=int, help="Random seed (default 0): same seed, same values.")
@click.option("--count", type=int, help="Stop after this many readings.")
@click.option("--rate", type=float, help="Load mode: messages per second across all sensors.")
@click.option("--machines", type=int, help="Simulate machine-1..N (with the config's sensors).")
@click.option("--prefix", help="Put in front of every topic.")
@click.option("--qos", type=click.IntRange(0, 2), help="Publish QoS (default 1).")
@click.option("--ground-truth", type=click.Path(dir_okay=False),
              help="JSON-lines file receiving every injected anomaly.")
@click.option("--ground-truth-topic", help="Topic (after prefix) receiving every anomaly.")
def simulate(config_file: str | None, host: str | None, port: int | None,
             interval: float | None, style: str | None, seed: int | None, count: int | None,
             rate: float | None, machines: int | None, prefix: str | None, qos: int | None,
             ground_truth: str | None, ground_truth_topic: str | None) -> None:
    """Publish simulated machine sensor readings to MQTT until --count or SIGINT/SIGTERM."""
    import threading

    from unsflow.simulator import Simulator, load_simulator_config

    overrides = {"host": host, "port": port, "interval": interval, "style": style, "seed": seed,
                 "count": count, "rate": rate, "machine-count": machines, "prefix": prefix,
                 "qos": qos, "ground-truth": ground_truth, "ground-truth-topic": ground_truth_topic}
    try:
        cfg = load_simulator_config(config_file, overrides)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    simulator = Simulator(cfg, config_path=config_file, overrides=overrides)
    try:
        stats = simulator.run(stop)
    except (UnsflowError, TimeoutError) as exc:
        click.echo(f"unsflow simulate: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(stats.summary())


@main.command()
@click.option("--store", "store", default="models", show_default=True,
              help="Model store: a directory or s3://, gs://, az:// URL.")
@click.option("--store-option", "store_options", multiple=True, metavar="KEY=VALUE",
              help="Object store option (endpoint, region, allow-http, access-key-id, ...); "
              "repeatable.")
@click.option("--models", default=None, help="NAME[,NAME]: the models to serve (default: all).")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--poll-interval", default=10.0, show_default=True, type=float,
              help="Seconds between checks of the store for new versions (0: never).")
@click.option("--rest-prefix", default="/api/v1", show_default=True,
              help="Path prefix of the plain REST endpoint (POST PREFIX/MODEL).")
@click.option("--input-field", default="window", show_default=True,
              help="Plain REST: the record field holding the model input.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Inference threads.")
@click.option("--inline-max-ms", default=0.5, show_default=True, type=click.FloatRange(0, 100),
              help="Calls measured faster than this run on the event loop, not a thread "
              "(0: always a thread).")
def serve(store: str, store_options: tuple[str, ...], models: str | None, host: str, port: int,
          poll_interval: float, rest_prefix: str, input_field: str, workers: int,
          inline_max_ms: float) -> None:
    """Serve the models of a model store (KServe Open Inference Protocol v2 and plain REST)."""
    from unsflow.server import run_server
    from unsflow.server.app import ServeConfig

    options = {}
    for item in store_options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            click.echo(f"--store-option: expected KEY=VALUE, found {item!r}", err=True)
            sys.exit(EXIT_CONFIG)
        options[key.strip()] = value
    names = [n.strip() for n in models.split(",") if n.strip()] if models else None
    config = ServeConfig(store=store, store_options=options, models=names, host=host, port=port,
                         poll_interval=poll_interval, rest_prefix=rest_prefix,
                         input_field=input_field, workers=workers,
                         inline_max_ms=inline_max_ms)
    try:
        run_server(config)
    except (ValueError, UnsflowError) as exc:
        click.echo(f"unsflow serve: {exc}", err=True)
        sys.exit(EXIT_FAILED)


def _add_ml_commands() -> None:
    from unsflow.ml.command import train_command

    main.add_command(train_command)


_add_ml_commands()


def _add_app_commands() -> None:
    from unsflow.dashboard.command import dashboard_command
    from unsflow.demo.command import demo_command

    main.add_command(dashboard_command)
    main.add_command(demo_command)


_add_app_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
