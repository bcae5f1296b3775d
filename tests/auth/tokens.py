"""Tokens and key sets for the tests: HS256 tokens signed like a backend's, RSA and EC keys
served as a JWKS by a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "test-secret-of-at-least-thirty-two-bytes!"


def hs256(sub: Any = "alice", *, secret: str = SECRET, ttl: float = 300, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl), **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        cls = jwt.algorithms.RSAAlgorithm if self.algorithm == "RS256" else jwt.algorithms.ECAlgorithm
        document: dict[str, Any] = json.loads(cls.to_jwk(public))
        return {**document, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, sub: Any = "alice", *, ttl: float = 300, kid: str | None = "", **claims: Any) -> str:
        now = int(time.time())
        payload = {"sub": sub, "iat": now, "exp": now + int(ttl), **claims}
        headers = {"kid": self.kid if kid == "" else kid} if kid is not None else {}
        return jwt.encode(payload, self.private, algorithm=self.algorithm, headers=headers)


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class JwksServer:
    """A JWKS endpoint: serves ``keys``, counts the requests it answered."""

    keys: list[SigningKey] = field(default_factory=list)
    fetches: int = 0
    url: str = ""
    server: ThreadingHTTPServer | None = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@contextmanager
def jwks_server(*keys: SigningKey) -> Iterator[JwksServer]:
    served = JwksServer(list(keys))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.fetches += 1
            body = json.dumps({"keys": [key.jwk() for key in served.keys]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    served.server = server
    served.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    try:
        yield served
    finally:
        served.stop()
