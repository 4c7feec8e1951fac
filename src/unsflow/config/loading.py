"""Loading a config: from a file (JSON or YAML) or from the environment.

Validation is two passes over the raw data, and both always run so that the
user sees every problem at once: the structural pass (pydantic: types, unknown
keys, ranges) and the semantic pass (topic filters, references between
sections). Nothing connects before both pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from unsflow import registry
from unsflow.config.models import PipelineConfig, pipeline_model
from unsflow.config.syntax import did_you_mean, json_syntax_issue, yaml_syntax_issue
from unsflow.engine.topics import filter_problem
from unsflow.errors import ConfigError, ConfigIssue

__all__ = ["load_config", "load_config_text", "parse_config", "ENV_CONFIG", "ENV_HOST", "ENV_PORT",
           "ENV_CLIENT_ID"]

ENV_CONFIG = "EDGE_SUBSCRIPTION_CONFIG"
ENV_HOST = "EDGE_BROKER_HOST"
ENV_PORT = "EDGE_MQTT_PORT"
# The UNS client id when the config names none: one config for N replicas, each
# with its own stable id (a StatefulSet passes the pod name).
ENV_CLIENT_ID = "UNSFLOW_CLIENT_ID"


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> PipelineConfig:
    """Load and validate a config file, or ``EDGE_SUBSCRIPTION_CONFIG`` when ``path`` is None."""
    env = os.environ if env is None else env
    if path is None:
        text = env.get(ENV_CONFIG)
        if not text:
            raise ConfigError(
                [ConfigIssue(ENV_CONFIG, "a config file argument or inline JSON in " + ENV_CONFIG,
                             "neither")],
                source="environment",
            )
        return load_config_text(text, fmt="json", source=ENV_CONFIG, env=env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", "a readable config file", f"{exc.strerror}: {p}")],
                          source=str(p)) from exc
    fmt = "yaml" if p.suffix.lower() in (".yaml", ".yml") else "json"
    return load_config_text(text, fmt=fmt, source=str(p), env=env)


def load_config_text(text: str, *, fmt: str = "json", source: str = "config",
                     env: Mapping[str, str] | None = None) -> PipelineConfig:
    """Parse ``text`` as JSON or YAML and validate it."""
    try:
        data = yaml.safe_load(text) if fmt == "yaml" else json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([json_syntax_issue(text, exc)], source=source) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_syntax_issue(exc)], source=source) from exc
    return parse_config(data, source=source, env=env)


def parse_config(data: Any, *, source: str = "config",
                 env: Mapping[str, str] | None = None) -> PipelineConfig:
    """Validate already-parsed data; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue("", "an object with targets and subscriptions",
                                       type(data).__name__)], source=source)
    issues: list[ConfigIssue] = []
    config: PipelineConfig | None = None
    try:
        config = pipeline_model().model_validate(data)
    except ValidationError as exc:
        issues.extend(_structural_issues(exc, data))
    issues.extend(_semantic_issues(data))
    port = _env_port(env, issues)
    if issues or config is None:
        raise ConfigError(_dedupe(issues), source=source)
    broker = config.mqtt_broker
    update: dict[str, Any] = {}
    if broker.host is None:
        update["host"] = env.get(ENV_HOST) or "localhost"
    if broker.port is None:
        update["port"] = port or (8883 if broker.tls else 1883)
    if broker.client_id is None and env.get(ENV_CLIENT_ID):
        update["client_id"] = env[ENV_CLIENT_ID]
    if update:
        config = config.model_copy(update={"mqtt_broker": broker.model_copy(update=update)})
    return config


def _env_port(env: Mapping[str, str], issues: list[ConfigIssue]) -> int | None:
    raw = env.get(ENV_PORT)
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        issues.append(ConfigIssue(ENV_PORT, "a port number 1..65535", repr(raw)))
        return None
    return port


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _structural_issues(exc: ValidationError, data: dict[str, Any]) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors():
        loc = list(err["loc"])
        # A discriminated union adds the type tag to the path; a user never wrote it.
        if len(loc) > 2 and loc[0] in ("targets", "processors", "sources"):
            item = data.get(loc[0], {}).get(loc[1]) if isinstance(data.get(loc[0]), dict) else None
            if isinstance(item, dict) and loc[2] == item.get("type"):
                del loc[2]
        # A `str | list[str]` field reports one error per member; the path says enough.
        loc = [part for part in loc if part not in ("str", "list[str]")]
        path = ".".join(str(part) for part in loc)
        kind = err["type"]
        if kind == "missing":
            issues.append(ConfigIssue(path, "a value (required key)", "nothing"))
        elif kind == "extra_forbidden":
            known = _known_keys(loc[:-1], data)
            guess = did_you_mean(str(loc[-1]), known) if known else None
            hint = f" (did you mean {guess!r}?)" if guess else ""
            issues.append(ConfigIssue(path, "no such key (unknown keys are errors)",
                                      f"key {loc[-1]!r}{hint}"))
        elif kind == "union_tag_invalid":
            tags = err.get("ctx", {}).get("expected_tags", "")
            issues.append(ConfigIssue(path + ".type", f"one of {tags}", _short(err["input"].get("type")
                                      if isinstance(err["input"], dict) else err["input"])))
        elif kind == "union_tag_not_found":
            issues.append(ConfigIssue(path + ".type", "a 'type' key naming the component",
                                      "nothing"))
        elif kind == "value_error" and not loc:
            issues.append(ConfigIssue(path, err["msg"].replace("Value error, ", ""), "none"))
        else:
            msg = err["msg"].replace("Input should be ", "").replace("Value error, ", "")
            issues.append(ConfigIssue(path, msg, _short(err["input"])))
    return issues


_SECTIONS = {"targets": "targets", "processors": "processors", "sources": "sources"}


def _known_keys(loc: list[Any], data: dict[str, Any]) -> list[str]:
    """The keys the model at ``loc`` accepts (for "did you mean"); empty if unknown."""
    model: Any = pipeline_model()
    node: Any = data
    i = 0
    while i < len(loc):
        part = loc[i]
        if i == 0 and part in _SECTIONS:
            if i + 1 >= len(loc):
                return []
            item = node.get(part, {}).get(loc[1]) if isinstance(node.get(part), dict) else None
            if not isinstance(item, dict):
                return []
            try:
                model = registry.load(_SECTIONS[part], str(item.get("type"))).config_class  # type: ignore[arg-type]
            except (KeyError, ImportError, AttributeError):
                return []
            node, i = item, i + 2
            continue
        if i == 0 and part == "subscriptions":
            if i + 1 >= len(loc):
                return []
            from unsflow.config.models import SubscriptionConfig

            model, node, i = SubscriptionConfig, None, i + 2
            continue
        field = next((f for n, f in model.model_fields.items()
                      if (f.alias or n) == part or n == part), None)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
        node = node.get(part) if isinstance(node, dict) else None
        i += 1
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config model inside an annotation (``X``, ``X | None``), if there is one."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _semantic_issues(data: dict[str, Any]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    targets = data.get("targets") if isinstance(data.get("targets"), dict) else {}
    processors = data.get("processors") if isinstance(data.get("processors"), dict) else {}
    subs = data.get("subscriptions")
    if isinstance(subs, dict):
        for flt, sub in subs.items():
            problem = filter_problem(flt)
            if problem:
                issues.append(ConfigIssue(f"subscriptions.{flt}", problem, repr(flt)))
            if not isinstance(sub, dict):
                continue
            names = sub.get("target")
            for name in [names] if isinstance(names, str) else (names or []):
                if isinstance(name, str) and name not in targets:
                    issues.append(ConfigIssue(
                        f"subscriptions.{flt}.target",
                        f"the name of a target in 'targets' ({', '.join(sorted(targets)) or 'none'})",
                        repr(name)))
    sources = data.get("sources") if isinstance(data.get("sources"), dict) else {}
    for sname, source in sources.items():
        names = source.get("target") if isinstance(source, dict) else None
        for name in [names] if isinstance(names, str) else (names or []):
            if isinstance(name, str) and name not in targets:
                issues.append(ConfigIssue(
                    f"sources.{sname}.target",
                    f"the name of a target in 'targets' ({', '.join(sorted(targets)) or 'none'})",
                    repr(name)))
    dead_letter = data.get("dead-letter")
    if isinstance(dead_letter, dict) and isinstance(dead_letter.get("target"), str) \
            and dead_letter["target"] not in targets:
        issues.append(ConfigIssue(
            "dead-letter.target",
            f"the name of a target in 'targets' ({', '.join(sorted(targets)) or 'none'})",
            repr(dead_letter["target"])))
    for tname, target in targets.items():
        if not isinstance(target, dict) or not isinstance(target.get("processors"), list):
            continue
        for i, pname in enumerate(target["processors"]):
            if isinstance(pname, str) and pname not in processors:
                issues.append(ConfigIssue(
                    f"targets.{tname}.processors.{i}",
                    f"the name of a processor in 'processors' ({', '.join(sorted(processors)) or 'none'})",
                    repr(pname)))
    return issues


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return list(dict.fromkeys(issues))
