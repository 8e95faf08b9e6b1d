"""The bearer token of an operators' HTTP API (endpoints, registry, approvals).

Every request but `/healthz` must carry `Authorization: Bearer <token>`; a wrong or missing one gets
401 with a JSON error. The comparison takes the same time whatever the caller sent.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse


@dataclass(frozen=True)
class BearerToken:
    """`token` (never shown: not in repr) of the API named `realm` (in the 401's www-authenticate)."""

    token: str = field(repr=False)
    realm: str

    def allows(self, request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {self.token}".encode())

    def refusal(self) -> JSONResponse:
        return JSONResponse({"error": "a valid bearer token is required"}, status_code=401,
                            headers={"www-authenticate": f'Bearer realm="{self.realm}"'})  # fmt: skip
