"""The aws-secrets-manager provider against a server that speaks the Secrets Manager API (moto).

Every error names the secret (and region, and AWS error code) and never its value.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.conftest import AwsEndpoint
from unsflow.components import Context
from unsflow.config.models import SecretRef
from unsflow.errors import SecretError

pytestmark = pytest.mark.integration

VALUE = "s3cr3t-VALUE-never-shown"


def aws_env(sm: AwsEndpoint, **more: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": sm.access_key, "AWS_SECRET_ACCESS_KEY": sm.secret_key,
            "UNSFLOW_AWS_SECRETS_ENDPOINT": sm.endpoint} | more


async def resolve(ref: dict[str, Any], env: dict[str, str]) -> Any:
    return await Context(env=env).resolve_secret(SecretRef.model_validate(ref))


@pytest.fixture
def secret_name(secrets_manager: AwsEndpoint) -> str:
    return f"unsflow-test/{uuid.uuid4().hex[:12]}"


def put(sm: AwsEndpoint, name: str, region: str = "us-east-1", **value: Any) -> None:
    client = AwsEndpoint(sm.endpoint, sm.access_key, sm.secret_key, region, sm.log)
    client.client("secretsmanager").create_secret(Name=name, **value)


async def test_the_reference_form_reads_username_and_password(
        secrets_manager: AwsEndpoint, secret_name: str) -> None:
    put(secrets_manager, secret_name,
        SecretString=json.dumps({"username": "edge", "password": VALUE, "session-token": "t"}))
    # No provider: secret-region means AWS Secrets Manager, as in the reference config.
    cred = await resolve({"secret-name": secret_name, "secret-region": "us-east-1"},
                         aws_env(secrets_manager))
    assert (cred.username, cred.password) == ("edge", VALUE)
    assert cred.extra == {"session-token": "t"}
    assert VALUE not in repr(cred)


@pytest.mark.parametrize("how", ["reference", "AWS_ENDPOINT_URL_SECRETS_MANAGER"])
async def test_other_ways_to_name_the_endpoint(
        secrets_manager: AwsEndpoint, secret_name: str, how: str) -> None:
    put(secrets_manager, secret_name, SecretString=json.dumps({"username": "u", "password": "p"}))
    env = aws_env(secrets_manager)
    del env["UNSFLOW_AWS_SECRETS_ENDPOINT"]
    ref = {"secret-name": secret_name, "secret-region": "us-east-1"}
    if how == "reference":
        ref["endpoint"] = secrets_manager.endpoint
    else:
        env[how] = secrets_manager.endpoint
    assert (await resolve(ref, env)).username == "u"


async def test_region_from_the_environment_with_an_explicit_provider(
        secrets_manager: AwsEndpoint, secret_name: str) -> None:
    put(secrets_manager, secret_name, "eu-west-1",
        SecretString=json.dumps({"username": "u", "password": "p"}))
    ref = {"secret-name": secret_name, "provider": "aws-secrets-manager"}
    assert (await resolve(ref, aws_env(secrets_manager, AWS_REGION="eu-west-1"))).username == "u"
    with pytest.raises(SecretError, match="no region"):
        await resolve(ref, aws_env(secrets_manager))


async def test_a_binary_secret_holding_json_works(
        secrets_manager: AwsEndpoint, secret_name: str) -> None:
    put(secrets_manager, secret_name,
        SecretBinary=json.dumps({"username": "u", "password": "p"}).encode())
    ref = {"secret-name": secret_name, "secret-region": "us-east-1"}
    assert (await resolve(ref, aws_env(secrets_manager))).password == "p"


async def test_a_missing_secret_says_not_found_with_name_region_and_code(
        secrets_manager: AwsEndpoint, secret_name: str) -> None:
    with pytest.raises(SecretError) as info:
        await resolve({"secret-name": secret_name, "secret-region": "us-east-1"},
                      aws_env(secrets_manager))
    text = str(info.value)
    assert f"secret {secret_name!r}" in text and "region us-east-1" in text
    assert "not found [ResourceNotFoundException]" in text
    assert secrets_manager.endpoint in text


async def test_the_wrong_region_is_not_found_and_names_the_region(
        secrets_manager: AwsEndpoint, secret_name: str) -> None:
    put(secrets_manager, secret_name, SecretString=json.dumps({"username": "u", "password": VALUE}))
    with pytest.raises(SecretError) as info:
        await resolve({"secret-name": secret_name, "secret-region": "eu-central-1"},
                      aws_env(secrets_manager))
    assert "region eu-central-1" in str(info.value) and "not found" in str(info.value)
    assert VALUE not in str(info.value)


@pytest.mark.parametrize("value, expected", [
    (f"username={VALUE}", "is not a JSON object"),
    (json.dumps([VALUE]), "expected a JSON object"),
    (json.dumps({"user": "u", "password": VALUE}), "non-empty string 'username'"),
    (json.dumps({"username": "u", "password": 7}), "'password' to be a string"),
])
async def test_a_malformed_secret_says_what_is_wrong_never_the_value(
        secrets_manager: AwsEndpoint, secret_name: str, value: str, expected: str) -> None:
    put(secrets_manager, secret_name, SecretString=value)
    with pytest.raises(SecretError) as info:
        await resolve({"secret-name": secret_name, "secret-region": "us-east-1"},
                      aws_env(secrets_manager))
    text = str(info.value)
    assert expected in text and f"secret {secret_name!r}" in text
    assert VALUE not in text and "username=" not in text
    # No chained exception either (a JSONDecodeError carries the whole text in .doc).
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


async def test_an_unreachable_endpoint_is_a_clear_error(secret_name: str) -> None:
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "UNSFLOW_AWS_SECRETS_ENDPOINT": "http://127.0.0.1:9"}  # discard port: refused
    with pytest.raises(SecretError, match=r"secret 'unsflow-test/\w+' .*: cannot reach the endpoint"):
        await resolve({"secret-name": secret_name, "secret-region": "us-east-1"}, env)
