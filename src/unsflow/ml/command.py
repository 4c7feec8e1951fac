"""The ``unsflow train`` command (registered in :mod:`unsflow.cli`). Thin: see :mod:`unsflow.ml.train`."""

from __future__ import annotations

import json
import sys

import click

from unsflow.errors import MissingDependency, UnsflowError

__all__ = ["train_command"]


def _options(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, found {pair!r}", param_hint=what)
        out[key.strip()] = value
    return out


@click.command("train")
@click.option("--lake", required=True, help="Data lake root: a directory or s3://bucket/prefix "
              "(the s3 target's key-prefix).")
@click.option("--lake-option", multiple=True, metavar="KEY=VALUE",
              help="s3:// lake: endpoint, region, access-key-id, secret-access-key, "
              "session-token.")
@click.option("--store", required=True, help="Model store: a directory or s3://, gs://, az:// URL.")
@click.option("--store-option", multiple=True, metavar="KEY=VALUE",
              help="Model store options: endpoint, region, allow-http, access-key-id, "
              "secret-access-key, ...")
@click.option("--name", default="vibration-anomaly", show_default=True, help="Model name.")
@click.option("--ground-truth", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Simulator ground truth (JSON lines) or a CSV with ts,id,label "
              "(repeatable).")
@click.option("--window", default=5, show_default=True, type=click.IntRange(2, 1000),
              help="Values in a window (the model's input width).")
@click.option("--train-fraction", default=0.7, show_default=True,
              type=click.FloatRange(0.05, 0.95), help="Share of the time span used for training; "
              "the rest is the held-out test period.")
@click.option("--sensor", default="vibration", show_default=True,
              help="Only this sensor's readings ('' for all).")
@click.option("--value-field", default=None, help="Column of the value (default: value).")
@click.option("--time-field", default=None,
              help="Column of the time, epoch ms or ISO 8601 (default: epochMillis or timestamp).")
@click.option("--key-fields", default=None,
              help="Comma-separated columns that identify a series (default: machineId,deviceId "
              "or machine,sensor).")
@click.option("--model", "models", multiple=True,
              help="Candidate model(s) to choose from (default: random-forest, extra-trees, "
              "gradient-boosting).")
def train_command(lake: str, lake_option: tuple[str, ...], store: str,
                  store_option: tuple[str, ...], name: str, ground_truth: tuple[str, ...],
                  window: int, train_fraction: float, sensor: str, value_field: str | None,
                  time_field: str | None, key_fields: str | None,
                  models: tuple[str, ...]) -> None:
    """Train an anomaly model on the lake's sensor history and store it as a new version.

    Prints the stored version and its metrics (ours and the demo's depth-2 tree
    on the same held-out data) as JSON.
    """
    from unsflow.ml.features import LakeSpec
    from unsflow.ml.train import TrainOptions, train

    spec = LakeSpec(value_field=value_field, time_field=time_field,
                    key_fields=tuple(k.strip() for k in key_fields.split(",")) if key_fields
                    else None, sensor=sensor or None)
    opts = TrainOptions(lake=lake, store=store, name=name, ground_truth=ground_truth,
                        lake_options=_options(lake_option, "--lake-option"),
                        store_options=_options(store_option, "--store-option"), spec=spec,
                        window=window, train_fraction=train_fraction,
                        **({"candidates": models} if models else {}))
    try:
        result = train(opts)
    except (UnsflowError, MissingDependency, ValueError) as exc:
        from unsflow.cli import EXIT_FAILED

        click.echo(f"unsflow train: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    m = result.metrics
    click.echo(json.dumps({
        "name": result.name, "version": result.version, "store": store, "model": result.model,
        "f1": m["f1"], "precision": m["precision"], "recall": m["recall"],
        "detection-delay-seconds": m["detection-delay-seconds"],
        "baseline-f1": m["baseline"]["f1"], "test-windows": m["test-windows"],
        "by-kind": {k: v["recall"] for k, v in m["test"]["by-kind"].items()},
        "baseline-by-kind": {k: v["recall"] for k, v in m["baseline"]["test"]["by-kind"].items()},
    }))
