"""Secret providers: env and file; errors name the secret, never its value."""

import json

import pytest

from unsflow.components import Context
from unsflow.config.models import SecretRef
from unsflow.errors import SecretError


async def resolve(ref: dict, env: dict):
    return await Context(env=env).resolve_secret(SecretRef.model_validate(ref))


async def test_env_json():
    cred = await resolve({"secret-name": "mqtt-credential"},
                         {"MQTT_CREDENTIAL": json.dumps({"username": "u", "password": "s3cr3t"})})
    assert (cred.username, cred.password) == ("u", "s3cr3t")
    assert "s3cr3t" not in repr(cred) and "s3cr3t" not in str(cred)


async def test_env_pair():
    cred = await resolve({"secret-name": "uns", "provider": "env"},
                         {"UNS_USERNAME": "u", "UNS_PASSWORD": "p"})
    assert (cred.username, cred.password) == ("u", "p")


async def test_env_missing_names_the_variables():
    with pytest.raises(SecretError, match="MQTT_CREDENTIAL_USERNAME"):
        await resolve({"secret-name": "mqtt-credential"}, {})


async def test_env_malformed_does_not_leak_value():
    with pytest.raises(SecretError) as info:
        await resolve({"secret-name": "c"}, {"C": "hunter2-not-json"})
    assert "hunter2" not in str(info.value) and "'c'" in str(info.value)


async def test_file_json(tmp_path):
    (tmp_path / "mqtt-credential").write_text(json.dumps({"username": "u", "password": "p"}))
    cred = await resolve({"secret-name": "mqtt-credential", "provider": "file"},
                         {"UNSFLOW_SECRETS_DIR": str(tmp_path)})
    assert (cred.username, cred.password) == ("u", "p")


async def test_file_kubernetes_basic_auth_layout(tmp_path):
    (tmp_path / "username").write_text("u\n")
    (tmp_path / "password").write_text("p\n")
    cred = await resolve({"secret-name": "x", "provider": "file", "path": str(tmp_path)}, {})
    assert (cred.username, cred.password) == ("u", "p")


async def test_file_malformed_names_file_not_value(tmp_path):
    f = tmp_path / "s"
    f.write_text('{"username": "u", "password": 5}')
    with pytest.raises(SecretError, match="'password' to be a string"):
        await resolve({"secret-name": "s", "provider": "file", "path": str(f)}, {})
    f.write_text("topsecret")
    with pytest.raises(SecretError) as info:
        await resolve({"secret-name": "s", "provider": "file", "path": str(f)}, {})
    assert "topsecret" not in str(info.value)


async def test_file_missing(tmp_path):
    with pytest.raises(SecretError, match="cannot read"):
        await resolve({"secret-name": "nope", "provider": "file"}, {"UNSFLOW_SECRETS_DIR": str(tmp_path)})


async def test_region_without_provider_means_aws_and_says_so():
    # Nothing listens on the discard port: the provider fails fast, without a network.
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "UNSFLOW_AWS_SECRETS_ENDPOINT": "http://127.0.0.1:9"}
    with pytest.raises(SecretError, match=r"'mqtt-credential' \(aws-secrets-manager, region "
                                          r"us-east-1, endpoint http://127.0.0.1:9\)"):
        await resolve({"secret-name": "mqtt-credential", "secret-region": "us-east-1"}, env)


async def test_unknown_provider_lists_the_installed_ones():
    with pytest.raises(SecretError, match="no secret provider named 'vault'.*aws-secrets-manager"):
        await resolve({"secret-name": "x", "provider": "vault"}, {})
