"""SigV4 for the callback route: the compute function signs, the local gateway verifies.

In AWS, API Gateway verifies the signature itself (``AWS_IAM`` on the route); the local
stack verifies it the same way so that an unsigned callback is refused there too.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import re
from collections.abc import Callable, Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = "execute-api"
MAX_CLOCK_SKEW_S = 300

# botocore logs every signature it makes, and the request with its Authorization header, at
# DEBUG. A root logger at DEBUG (Lambda's ApplicationLogLevel=DEBUG sets one) would put them
# in CloudWatch; signatures and requests stay out of the logs unless botocore's own level is
# set on purpose.
for _name in ("botocore.auth", "botocore.endpoint"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.INFO)

_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


def sign(url: str, body: bytes, credentials: Credentials, region: str, method: str = "POST") -> dict[str, str]:
    """Headers for a request of exactly ``body`` to exactly ``url``."""
    request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(credentials, SERVICE, region).add_auth(request)
    return dict(request.headers.items())


def verify(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], str | None],
) -> str | None:
    """Why the request's signature is not acceptable, or None when it is.

    ``headers`` must have lower-case names; ``secret_for`` maps an access key id to its
    secret key (None for an unknown key).
    """
    match = _AUTHORIZATION.match(headers.get("authorization", ""))
    if not match:
        return "missing or malformed SigV4 Authorization header"
    if match["service"] != SERVICE:
        return f"signed for service {match['service']!r}, not {SERVICE!r}"
    secret = secret_for(match["key"])
    if secret is None:
        return "unknown access key"
    stamp = headers.get("x-amz-date", "")
    try:
        signed_at = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return "missing or malformed X-Amz-Date"
    if abs((dt.datetime.now(dt.UTC) - signed_at).total_seconds()) > MAX_CLOCK_SKEW_S:
        return "signature is too old or from the future"
    signed_names = match["signed"].split(";")
    if "host" not in signed_names:
        return "the Host header must be signed"

    try:
        request = AWSRequest(
            method=method, url=url, data=body, headers={name: headers.get(name, "") for name in signed_names}
        )
        request.context["timestamp"] = stamp
        auth = SigV4Auth(Credentials(match["key"], secret), SERVICE, match["region"])
        # botocore signs every header it is given; only the signed ones were passed above
        canonical = auth.canonical_request(request)
        string_to_sign = auth.string_to_sign(request, canonical)
        expected = auth.signature(string_to_sign, request)
    except (ValueError, TypeError, KeyError, UnicodeError) as e:
        # a Host or path no URL parser accepts: refused, like any other bad signature
        return f"the request cannot be canonicalized for SigV4 ({type(e).__name__})"
    if not hmac.compare_digest(expected.encode(), match["signature"].encode()):
        return "signature does not match the request"
    return None


def access_key(authorization: str) -> str:
    match = _AUTHORIZATION.match(authorization)
    return match["key"] if match else ""
