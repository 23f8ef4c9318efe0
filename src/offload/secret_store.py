"""Secret values (Redis AUTH token, callback signing key), read once per process.

In Lambda the AWS Parameters and Secrets extension serves secrets on localhost, so the
master and callback functions never import boto3 (it would double their cold start).
The worker and the compute function fall back to boto3 when the extension is absent.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from functools import cache

from offload.errors import ConfigError

_EXTENSION_PORT_VAR = "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"


@cache
def secret_string(arn: str) -> str:
    """The SecretString of a Secrets Manager secret; a JSON secret's ``token`` field if it has one."""
    raw = _from_extension(arn) if os.environ.get(_EXTENSION_PORT_VAR) else _from_boto3(arn)
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(data, dict):
        for name in ("token", "password", "secret"):
            if isinstance(data.get(name), str):
                return str(data[name])
    return raw


def _from_extension(arn: str) -> str:
    port = os.environ[_EXTENSION_PORT_VAR]
    url = f"http://localhost:{port}/secretsmanager/get?secretId={urllib.parse.quote(arn, safe='')}"
    request = urllib.request.Request(
        url, headers={"X-Aws-Parameters-Secrets-Token": os.environ.get("AWS_SESSION_TOKEN", "")}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return str(json.load(response)["SecretString"])
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"could not read secret {arn} through the Lambda extension: {e}") from e


def _from_boto3(arn: str) -> str:
    import boto3  # only the worker and compute function get here

    try:
        return str(boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])
    except Exception as e:
        raise ConfigError(f"could not read secret {arn}: {e}") from e
