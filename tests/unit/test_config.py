"""Config loading and validation: the reference config, every bad case, the schema."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from unsflow.config import json_schema, load_config, load_config_text
from unsflow.config.loading import parse_config
from unsflow.errors import ConfigError

EXAMPLES = Path(__file__).parents[2] / "examples"


def reference() -> dict:
    return json.loads((EXAMPLES / "reference.json").read_text())


def issues_of(data, env=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env or {})
    return [str(i) for i in info.value.issues]


def test_reference_config_loads_unchanged():
    cfg = load_config(EXAMPLES / "reference.json", env={})
    assert set(cfg.targets) == {"s3-target", "mqtt-target"}
    assert cfg.targets["mqtt-target"].processors == ["edge-inference"]
    assert cfg.processors["edge-inference"].type == "remote"
    assert cfg.subscriptions["com1/plant1/area1/+/Message1"].qos == 2
    assert cfg.mqtt_broker_credential.provider_name == "aws-secrets-manager"
    assert cfg.mqtt_broker.host == "localhost" and cfg.mqtt_broker.port == 1883


def test_broker_from_environment():
    cfg = load_config(EXAMPLES / "reference.json",
                      env={"EDGE_BROKER_HOST": "mqtt.plant", "EDGE_MQTT_PORT": "11883"})
    assert (cfg.mqtt_broker.host, cfg.mqtt_broker.port) == ("mqtt.plant", 11883)


def test_client_id_from_environment_when_the_config_names_none():
    """One config for N replicas: each takes its own stable id (a StatefulSet's pod name)
    and with it a persistent session; a client-id in the config wins."""
    cfg = load_config(EXAMPLES / "reference.json", env={"UNSFLOW_CLIENT_ID": "lake-2"})
    assert cfg.mqtt_broker.client_id == "lake-2" and cfg.mqtt_broker.persistent
    data = reference() | {"mqtt-broker": {"client-id": "fixed"}}
    cfg = parse_config(data, env={"UNSFLOW_CLIENT_ID": "lake-2"})
    assert cfg.mqtt_broker.client_id == "fixed"
    assert load_config(EXAMPLES / "reference.json", env={}).mqtt_broker.client_id is None


def test_inline_config_from_environment():
    env = {"EDGE_SUBSCRIPTION_CONFIG": json.dumps(reference()), "EDGE_BROKER_HOST": "b"}
    cfg = load_config(None, env=env)
    assert cfg.mqtt_broker.host == "b" and "s3-target" in cfg.targets


def test_bad_port_in_environment():
    assert any("EDGE_MQTT_PORT" in i and "'abc'" in i
               for i in issues_of(reference(), env={"EDGE_MQTT_PORT": "abc"}))


def test_no_config_anywhere():
    with pytest.raises(ConfigError, match="EDGE_SUBSCRIPTION_CONFIG"):
        load_config(None, env={})


def test_yaml_config(tmp_path):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(reference()))
    assert load_config(p, env={}).targets["s3-target"].s3_bucket == "sample-bucket"


def test_local_datalake_example():
    cfg = load_config(EXAMPLES / "local-datalake.json", env={})
    assert list(cfg.subscriptions) == ["#"] and cfg.subscriptions["#"].qos == 1
    assert cfg.mqtt_broker.client_id and cfg.mqtt_broker.persistent
    assert cfg.targets["datalake"].local_path == "./datalake"


def test_unknown_keys_are_errors_with_path():
    data = reference()
    data["targets"]["s3-target"]["s3-bukket"] = "x"
    data["colour"] = "blue"
    found = issues_of(data)
    assert "targets.s3-target.s3-bukket: expected no such key (unknown keys are errors), found key 's3-bukket' (did you mean 's3-bucket'?)" in found
    assert any(i.startswith("colour:") for i in found)


def test_wrong_types():
    data = reference()
    data["subscriptions"]["com1/plant1/area1/+/Message1"]["qos"] = "two"
    data["targets"]["mqtt-target"]["mqtt-broker-port"] = "x"
    found = issues_of(data)
    assert any(i.startswith("subscriptions.com1/plant1/area1/+/Message1.qos:") and "'two'" in i
               for i in found)
    assert any(i.startswith("targets.mqtt-target.mqtt-broker-port:") for i in found)


@pytest.mark.parametrize("qos", [-1, 3])
def test_qos_out_of_range(qos):
    data = reference()
    data["subscriptions"]["com1/plant1/area1/+/Message2"]["qos"] = qos
    found = issues_of(data)
    assert any(i.startswith("subscriptions.com1/plant1/area1/+/Message2.qos:") and str(qos) in i
               for i in found), found


def test_missing_target_and_processor_references():
    data = reference()
    data["subscriptions"]["com1/plant1/area1/+/Message2"]["target"] = "kafka-target"
    data["targets"]["mqtt-target"]["processors"] = ["edge-inference", "nope"]
    found = issues_of(data)
    assert ("subscriptions.com1/plant1/area1/+/Message2.target: expected the name of a target "
            "in 'targets' (mqtt-target, s3-target), found 'kafka-target'") in found
    assert any(i.startswith("targets.mqtt-target.processors.1:") and "'nope'" in i for i in found)


@pytest.mark.parametrize("flt", ["a/#/b", "+foo"])
def test_invalid_topic_filters(flt):
    data = reference()
    data["subscriptions"][flt] = {"qos": 1, "target": "s3-target"}
    assert any(i.startswith(f"subscriptions.{flt}:") for i in issues_of(data))


def test_unknown_component_type():
    data = reference()
    data["targets"]["s3-target"]["type"] = "s4"
    found = issues_of(data)
    assert any(i.startswith("targets.s3-target.type:") and "'s4'" in i and "'s3'" in i for i in found)


def test_every_error_reported_at_once():
    data = reference()
    data["targets"]["s3-target"]["s3-bukket"] = "x"
    data["subscriptions"]["a/#/b"] = {"qos": 5, "target": "none"}
    assert len(issues_of(data)) >= 4


def test_invalid_json_text():
    with pytest.raises(ConfigError, match="line 1, column 2: expected a key in double quotes"):
        load_config_text("{nope", source="x.json")


@pytest.mark.parametrize("text, message", [
    # a trailing comma: the decoder says line 5 ("Expecting property name"), the comma is on 4
    ('{\n  "targets": {\n    "lake": {"type": "file", "path": "x.jsonl"}\n  },\n'
     '  "subscriptions": {"a/#": {"qos": 1, "target": "lake"}},\n}',
     "line 5, column 57: expected no comma after the last item before '}' (JSON allows no "
     "trailing comma), found '\"subscriptions\": {\"a/#\": {\"qos\": 1, \"target\": "
     "\"lake\"}},'"),
    ('{"a": [1, 2,]}', "line 1, column 12: expected no comma after the last item before ']'"),
    ('{\n  "targets": {}\n  "subscriptions": {}\n}',
     "line 2, column 16: expected a comma between two items, found '\"targets\": {}'"),
    ("{'targets': {}}", "line 1, column 2: expected a key in double quotes (JSON has no single "
                        "quotes)"),
    ('{"targets": {"a": "C:\\path"}}', "a Windows path needs each backslash doubled"),
    ('{"targets": "x', "line 1, column 13: expected a closing double quote"),
    ('{"targets": {}} x', "line 1, column 17: expected nothing after the end of the config"),
    ("", "<root>: expected a JSON object with targets and subscriptions, found an empty file"),
])
def test_json_syntax_errors_name_line_column_and_mistake(text, message):
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="x.json")
    assert message in str(info.value)


def test_yaml_syntax_error_names_line_and_column():
    with pytest.raises(ConfigError) as info:
        load_config_text("targets:\n  lake: {type: file\nsubscriptions: {}\n", fmt="yaml")
    assert "line 3, column 14: expected valid YAML, found while parsing a flow mapping" in \
        str(info.value)


def test_unknown_keys_suggest_the_nearest_known_key():
    data = reference()
    data["targets"]["s3-target"]["formt"] = "parquet"
    data["mqtt-broker"] = {"hots": "broker", "tls": {"ca-fle": "/ca.crt"}}
    data["subscriptions"]["com1/plant1/area1/+/Message1"]["tagret"] = "x"
    data["spool"] = {"max-byte": 1}
    data["subscription"] = {}
    data["processors"]["edge-inference"]["zzz"] = 1
    found = "\n".join(issues_of(data))
    for line in [
        "targets.s3-target.formt: expected no such key (unknown keys are errors), found key "
        "'formt' (did you mean 'format'?)",
        "found key 'hots' (did you mean 'host'?)",
        "mqtt-broker.tls.ca-fle: expected no such key (unknown keys are errors), found key "
        "'ca-fle' (did you mean 'ca-file'?)",
        "found key 'tagret' (did you mean 'target'?)",
        "found key 'max-byte' (did you mean 'max-bytes'?)",
        "found key 'subscription' (did you mean 'subscriptions'?)",
        "processors.edge-inference.zzz: expected no such key (unknown keys are errors), found "
        "key 'zzz'\n",
    ]:
        assert line in found + "\n", line


def test_schema_is_valid_and_accepts_reference():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(reference(), schema)
    assert "s3-bucket" in json.dumps(schema)
    with pytest.raises(jsonschema.ValidationError):
        bad = reference()
        bad["subscriptions"]["x/#"] = {"qos": 7, "target": "s3-target"}
        jsonschema.validate(bad, schema)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "unsflow.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_cli_validate_reference_ok():
    r = run_cli("validate", str(EXAMPLES / "reference.json"))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_cli_validate_reports_each_error(tmp_path):
    data = reference()
    data["subscriptions"]["a/#/b"] = {"qos": 3, "target": "missing"}
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    r = run_cli("validate", str(p))
    assert r.returncode == 2  # EXIT_CONFIG, as `unsflow run` exits for the same config
    assert "subscriptions.a/#/b.qos" in r.stderr
    assert "subscriptions.a/#/b.target" in r.stderr
    assert "subscriptions.a/#/b:" in r.stderr


def test_cli_schema_prints_json_schema():
    r = run_cli("schema")
    assert r.returncode == 0
    jsonschema.Draft202012Validator.check_schema(json.loads(r.stdout))


def test_config_reference_is_current():
    import importlib.util

    path = Path(__file__).parents[2] / "scripts" / "gen_config_reference.py"
    spec = importlib.util.spec_from_file_location("gen_config_reference", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.OUT.read_text() == gen.render(), (
        "docs/config-reference.md is stale: run python scripts/gen_config_reference.py")
