"""Test peers for delegated credentials and upstream TLS, written for these tests only.

- `Pki`: a CA and server certificates minted with `cryptography` (RSA 2048,
  short-lived), written as PEM files.
- `UserTokens`: an RSA signing key, its JWKS (for a Gateway's `jwtProviders`)
  and user JWTs minted with PyJWT.
- `TokenEndpoint`: a tiny RFC 8693 token endpoint (Starlette on uvicorn, in
  the test's event loop, on a kernel-chosen port). It checks the grant type,
  the subject token type, the client's HTTP Basic credentials and the
  subject token's signature, then issues `backend-token-for-<sub>`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ISSUER = "https://idp.test"
AUDIENCE = "agentxds-gateway"


# ---------------------------------------------------------------- certificates


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


@dataclass
class Ca:
    name: str
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


class Pki:
    """Certificates under `directory`: `ca(name)` then `server(ca, dns=..., ips=...)`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def ca(self, name: str) -> tuple[Ca, Path]:
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        ca = Ca(name, key, cert)
        path = self.directory / f"{name}-ca.pem"
        path.write_bytes(ca.pem)
        return ca, path

    def server(self, ca: Ca, name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A server certificate with these SANs, signed by `ca`; returns (certificate file, key file)."""
        key = _key()
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256())
        )  # fmt: skip
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.pem)
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return cert_path, key_path


# ---------------------------------------------------------------- user tokens


class UserTokens:
    """An identity provider's signing key: `jwks` for the gateway, `mint(sub)` for users."""

    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE, kid: str = "test-key-1") -> None:
        self.issuer, self.audience, self.kid = issuer, audience, kid
        self.key = _key()
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=kid, alg="RS256", use="sig")
        self.jwks = json.dumps({"keys": [jwk]})

    def mint(self, sub: str, *, lifetime_s: int = 600, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": self.audience, "sub": sub, "iat": now, "exp": now + lifetime_s,
                   "jti": uuid.uuid4().hex, **claims}  # fmt: skip
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})

    def verify(self, token: str) -> dict[str, Any]:
        return jwt.decode(token, self.key.public_key(), algorithms=["RS256"], audience=self.audience,
                          issuer=self.issuer)  # fmt: skip


# ---------------------------------------------------------------- RFC 8693 token endpoint


@dataclass
class Exchange:
    """One request the token endpoint received (form fields decoded) and its answer's status."""

    form: dict[str, str]
    client_id: str | None
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class TokenEndpoint:
    """A tiny RFC 8693 token endpoint: `await start()`, use `url`, `await stop()`.

    Answers 200 `{"access_token": "backend-token-for-<sub>", ...}` only for a
    token-exchange grant with an access_token/jwt subject token signed by
    `users`, from client `client_id` with `client_secret` (HTTP Basic,
    form-urlencoded parts, RFC 6749 2.3.1). Otherwise 400/401 with an OAuth
    `error`. `delay_s` slows every answer (for timeout tests).
    """

    def __init__(self, users: UserTokens, *, client_id: str, client_secret: str, expires_in: int = 300) -> None:
        self.users = users
        self.client_id, self.client_secret = client_id, client_secret
        self.expires_in = expires_in
        self.delay_s = 0.0
        self.exchanges: list[Exchange] = []
        self.port = 0
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth2/token"

    def _client_of(self, authorization: str | None) -> tuple[str | None, str | None]:
        if not authorization or not authorization.lower().startswith("basic "):
            return None, None
        try:
            raw = base64.b64decode(authorization[6:].strip()).decode()
        except ValueError:
            return None, None
        client, _, secret = raw.partition(":")
        return unquote_plus(client), unquote_plus(secret)

    async def _token(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        form = {k: str(v) for k, v in (await request.form()).items()}
        client, secret = self._client_of(request.headers.get("authorization"))

        def answer(status: int, body: dict[str, Any]) -> Any:
            self.exchanges.append(Exchange(form, client, status, dict(request.headers)))
            return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})

        if client != self.client_id or secret != self.client_secret:
            return answer(401, {"error": "invalid_client"})
        if form.get("grant_type") != TOKEN_EXCHANGE_GRANT:
            return answer(400, {"error": "unsupported_grant_type"})
        if form.get("subject_token_type") not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
            return answer(400, {"error": "invalid_request", "error_description": "subject_token_type"})
        try:
            claims = self.users.verify(form.get("subject_token", ""))
        except jwt.PyJWTError:
            return answer(400, {"error": "invalid_grant", "error_description": "subject_token is not valid"})
        return answer(200, {
            "access_token": f"backend-token-for-{claims['sub']}",
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        })  # fmt: skip

    async def start(self) -> TokenEndpoint:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        app = Starlette(routes=[Route("/oauth2/token", self._token, methods=["POST"])])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="token-endpoint")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout=5)
            self._task = None
