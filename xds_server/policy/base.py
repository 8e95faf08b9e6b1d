"""Building blocks of the policy models: the strict base model, field types and checks."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_VERSION = "agentxds.dev/v1"

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DURATION_PATTERN = r"^\d+(\.\d+)?(ms|s|m|h)$"
# RFC 9110 token: what a header field name may contain. Excludes ":", so
# pseudo-headers (":authority") can never be named as an identity header.
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
AGENT_REF_PATTERN = r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$"
# Paths are compared byte for byte by Envoy; a query or fragment here could
# never match a request path, so it is a mistake to catch early.
HTTP_PATH_PATTERN = r"^/[^?#\s\x00-\x1f\x7f]*$"
GLOB_PATTERN = r"^[^\s\x00-\x1f\x7f]+$"
SPIFFE_ID_PATTERN = r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$"
TRUST_DOMAIN_PATTERN = r"^[a-z0-9._-]+$"
MAX_BODY_BYTES = 10 * 1024 * 1024  # the most Envoy's MCP filter will buffer

# Friendlier wording for pattern mismatches; the loader uses it in messages.
PATTERN_HINTS: Mapping[str, str] = {
    NAME_PATTERN: "must be a lower-case DNS label: 1-63 of a-z, 0-9 and '-', "
    "starting and ending with a letter or digit",
    DURATION_PATTERN: "must be a duration such as 500ms, 5s, 1.5m or 2h",
    HEADER_NAME_PATTERN: "must be an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)",
    AGENT_REF_PATTERN: 'must be an Agent name or "*"',
    HTTP_PATH_PATTERN: "must be a path starting with '/', without query ('?'), fragment ('#') or whitespace",
    GLOB_PATTERN: "must be a non-empty glob without whitespace or control characters",
    SPIFFE_ID_PATTERN: "must be a SPIFFE ID such as spiffe://example.org/agent/triage",
    TRUST_DOMAIN_PATTERN: "must be a SPIFFE trust domain such as example.org (lower-case letters, digits, '.', '_', '-')",
}

_UNITS_MS = {"ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}
_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def duration_ms(value: str) -> int:
    """Milliseconds in a duration string such as "500ms", "5s", "1.5m", "2h".

    Raises ValueError for anything else, including sub-millisecond values
    ("0.5ms"), because Envoy timeouts have millisecond resolution here.
    """
    match = re.fullmatch(DURATION_PATTERN, value, re.ASCII)
    if not match:
        raise ValueError(f"invalid duration {value!r}: {PATTERN_HINTS[DURATION_PATTERN]}")
    unit = match.group(2)
    ms = Decimal(value[: -len(unit)]) * _UNITS_MS[unit]
    if ms != ms.to_integral_value():
        raise ValueError(f"duration {value!r} is not a whole number of milliseconds")
    return int(ms)


def _check_duration(value: str) -> str:
    duration_ms(value)
    return value


def is_ip(value: str) -> bool:
    """Whether `value` is an IP address (not a DNS name)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_host(value: str) -> str:
    if is_ip(value):
        return value
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is neither an IP address nor a DNS name")
    return value


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


def _check_header_value(value: str) -> str:
    # HTTP strips surrounding whitespace from header values, so such a value
    # could never match; control characters cannot appear in a header at all.
    if not value or value != value.strip() or re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError("must be a non-empty header value without control characters or surrounding spaces")
    return value


Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN), AfterValidator(_check_duration)]
HttpPath = Annotated[str, Field(pattern=HTTP_PATH_PATTERN)]
Glob = Annotated[str, Field(pattern=GLOB_PATTERN)]
Port = Annotated[int, Field(ge=1, le=65535)]
# A DNS host name as clients write it in Host (lower case, no port, no trailing dot, no wildcard).
HOST_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
HostName = Annotated[str, Field(pattern=HOST_NAME_PATTERN, max_length=253)]


class StrictModel(BaseModel):
    """Base of every policy model: frozen, no unknown fields, camelCase aliases."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
    )


class Metadata(StrictModel):
    """Identifies a document. `name` is unique per kind."""

    name: Name = Field(description="Unique name among documents of this kind (a DNS label).")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form string labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Free-form string annotations.")


class DocumentModel(StrictModel):
    """A whole policy document. Each kind narrows `kind` to its own name and adds its `spec`."""

    api_version: Literal["agentxds.dev/v1"] = Field(description="Always agentxds.dev/v1.")
    kind: str = Field(description="Document kind.")
    metadata: Metadata = Field(description="Name, labels and annotations.")
