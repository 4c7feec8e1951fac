"""Secrets from AWS Secrets Manager: the reference config's ``secret-name`` + ``secret-region``.

The secret's ``SecretString`` is a JSON object with ``username`` and
``password`` (other keys land in ``Credential.extra``, e.g. ``session-token``).
Where it is looked up:

- region: ``secret-region``, else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``;
- endpoint: ``endpoint`` in the reference, else ``UNSFLOW_AWS_SECRETS_ENDPOINT``,
  else ``AWS_ENDPOINT_URL_SECRETS_MANAGER``, else AWS's own endpoint of the region;
- AWS credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
  ``AWS_SESSION_TOKEN`` or ``AWS_PROFILE`` from the component's environment,
  else boto3's default chain (IAM role for service accounts, instance profile, ...).

Every failure is a :class:`~unsflow.errors.SecretError` naming the secret,
the region and the AWS error code; never the secret's value.
"""

from __future__ import annotations

import json
from typing import Any

from unsflow.blocking import run_blocking
from unsflow.config.models import SecretRef
from unsflow.errors import MissingDependency, SecretError
from unsflow.secrets.base import Credential, SecretProvider, credential_from_mapping

__all__ = ["AwsSecretsManagerProvider"]

ENDPOINT_VARS = ("UNSFLOW_AWS_SECRETS_ENDPOINT", "AWS_ENDPOINT_URL_SECRETS_MANAGER")

# AWS error codes of GetSecretValue, in words a user can act on.
_CODES = {
    "ResourceNotFoundException": "not found",
    "AccessDeniedException": "access denied (check the IAM policy: secretsmanager:GetSecretValue)",
    "DecryptionFailure": "cannot be decrypted with its KMS key",
    "InvalidRequestException": "cannot be read now (scheduled for deletion?)",
    "InvalidParameterException": "invalid request",
    "UnrecognizedClientException": "the AWS credentials were rejected",
    "InvalidSignatureException": "the AWS credentials were rejected",
    "ExpiredTokenException": "the AWS session token has expired",
}


class AwsSecretsManagerProvider(SecretProvider):
    """Resolves a reference with ``GetSecretValue``, in a worker thread (boto3 blocks)."""

    name = "aws-secrets-manager"

    async def resolve(self, ref: SecretRef) -> Credential:
        # A daemon thread: a stop while the endpoint hangs must not wait for boto3's retries.
        return await run_blocking(self._fetch, ref, name=f"secret:{ref.secret_name}")

    def _where(self, ref: SecretRef) -> tuple[str | None, str | None]:
        region = ref.secret_region or self.env.get("AWS_REGION") or self.env.get("AWS_DEFAULT_REGION")
        endpoint = ref.endpoint or next((self.env[v] for v in ENDPOINT_VARS if self.env.get(v)), None)
        return region, endpoint

    def _client(self, region: str, endpoint: str | None) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise MissingDependency("boto3", "aws") from None
        env = self.env
        keys: dict[str, Any] = {}
        if env.get("AWS_ACCESS_KEY_ID"):
            keys = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
                    "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY"),
                    "aws_session_token": env.get("AWS_SESSION_TOKEN")}
        elif env.get("AWS_PROFILE"):
            keys = {"profile_name": env["AWS_PROFILE"]}
        session = boto3.session.Session(region_name=region, **keys)
        # Bounded: a secret is resolved at start, and an unreachable endpoint
        # must become a clear error, not a hang.
        config = Config(connect_timeout=5, read_timeout=10,
                        retries={"max_attempts": 3, "mode": "standard"})
        return session.client("secretsmanager", endpoint_url=endpoint, config=config)

    def _fetch(self, ref: SecretRef) -> Credential:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            UndefinedModelAttributeError,
        )

        region, endpoint = self._where(ref)
        name = ref.secret_name
        where = f"aws-secrets-manager, region {region}" + (f", endpoint {endpoint}" if endpoint else "")
        if not region:
            raise SecretError(f"secret {name!r} (aws-secrets-manager): no region; set "
                              "secret-region in the reference, or AWS_REGION")
        try:
            response = self._client(region, endpoint).get_secret_value(SecretId=name)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "Unknown")
            what = _CODES.get(code, "AWS error")
            raise SecretError(f"secret {name!r} ({where}): {what} [{code}]") from None
        except NoCredentialsError:
            raise SecretError(f"secret {name!r} ({where}): no AWS credentials; set "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
                              "give the pod an IAM role") from None
        except EndpointConnectionError:
            raise SecretError(f"secret {name!r} ({where}): cannot reach the endpoint") from None
        except ValueError as exc:  # botocore: an endpoint URL it cannot use
            raise SecretError(f"secret {name!r} ({where}): {exc}") from None
        except (BotoCoreError, UndefinedModelAttributeError) as exc:
            # botocore's messages carry no secret values
            raise SecretError(f"secret {name!r} ({where}): {type(exc).__name__}: {exc}") from None
        return _parse(response, name, where)


def _parse(response: dict[str, Any], name: str, where: str) -> Credential:
    text = response.get("SecretString")
    if text is None and response.get("SecretBinary") is not None:
        try:
            text = bytes(response["SecretBinary"]).decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is None:
        raise SecretError(f"secret {name!r} ({where}): holds no SecretString; expected a JSON "
                          "object with 'username' and 'password'")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # Not even the decoder's position: it would point into the value.
        raise SecretError(f"secret {name!r} ({where}): SecretString is not a JSON object with "
                          "'username' and 'password'") from None
    return credential_from_mapping(data, name)
