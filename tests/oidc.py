"""Fixtures' helpers for OpenID Connect: the test provider (tests/oidc_provider.py) and a real
portal process configured against it. Both run as child processes on free loopback ports, are
waited for, and always stopped."""

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.servers import ROOT, free_port, stop_process

CLIENT_ID = "portal"
CLIENT_SECRET = "portal-secret-" + uuid.uuid4().hex
CI_CLIENT_ID = "ci-runner"
CI_CLIENT_SECRET = "ci-secret-" + uuid.uuid4().hex
GRPC_AUDIENCE = "reapi-test"


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited early:\n{log.read_text()}")
        try:
            if requests.get(url, timeout=1, allow_redirects=False).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not up after {timeout}s:\n{log.read_text()}")


class OidcProvider:
    """The test OpenID provider with one RSA signing key, a portal client and a CI client."""

    def __init__(self, users: list[dict[str, Any]], redirect_uris: list[str] | None = None) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="oidc-", dir=os.environ.get("DATA_DIR")))
        self.keys_dir = self.dir / "keys"
        self.keys_dir.mkdir()
        self.users = users
        self.redirect_uris = redirect_uris or []
        self.kid = self.add_key()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "provider.log"

    def add_key(self, kind: str = "rsa") -> str:
        """A new signing key, published in the JWKS from now on; returns its kid."""
        kid = f"{kind}-{uuid.uuid4().hex[:8]}"
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "ec":
            key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Written aside then renamed: the provider may be reading the folder.
        tmp = self.keys_dir / f".{kid}.tmp"
        tmp.write_bytes(pem)
        tmp.rename(self.keys_dir / f"{kid}.pem")
        return kid

    def private_key(self, kid: str | None = None) -> Any:
        pem = (self.keys_dir / f"{kid or self.kid}.pem").read_bytes()
        return serialization.load_pem_private_key(pem, password=None)

    def public_pem(self, kid: str | None = None) -> bytes:
        return (
            self.private_key(kid)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def sign(self, claims: dict[str, Any], kid: str | None = None, alg: str = "RS256") -> str:
        """A JWT signed with the provider's own key, with sensible defaults for a CI token."""
        now = int(time.time())
        body = {"iss": self.issuer, "aud": GRPC_AUDIENCE, "iat": now, "exp": now + 300, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private_key(kid), algorithm=alg, headers={"kid": kid or self.kid})

    def __enter__(self) -> "OidcProvider":
        config = {
            "issuer": self.issuer,
            "keys_dir": str(self.keys_dir),
            "clients": [
                {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": self.redirect_uris},
                {
                    "client_id": CI_CLIENT_ID,
                    "client_secret": CI_CLIENT_SECRET,
                    "redirect_uris": [],
                    "claims": {"repository": "acme/app", "ref": "refs/heads/main"},
                },
            ],
            "users": self.users,
        }
        (self.dir / "config.json").write_text(json.dumps(config))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "tests" / "oidc_provider.py"),
                    "--config",
                    str(self.dir / "config.json"),
                    "--port",
                    str(self.port),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_http(f"{self.issuer}/.well-known/openid-configuration", self.proc, self.log)
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def jwks_fetches(self) -> int:
        return int(requests.get(f"{self.issuer}/_stats", timeout=5).json()["jwks_fetches"])

    def client_credentials_token(self, audience: str = GRPC_AUDIENCE) -> str:
        reply = requests.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "audience": audience},
            auth=(CI_CLIENT_ID, CI_CLIENT_SECRET),
            timeout=5,
        )
        reply.raise_for_status()
        return str(reply.json()["access_token"])

    def portal_env(self) -> dict[str, str]:
        """The OIDC_* variables that point the portal's login at this provider (README)."""
        return {
            "OIDC_RP_CLIENT_ID": CLIENT_ID,
            "OIDC_RP_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_OP_ISSUER": self.issuer,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": f"{self.issuer}/authorize",
            "OIDC_OP_TOKEN_ENDPOINT": f"{self.issuer}/token",
            "OIDC_OP_USER_ENDPOINT": f"{self.issuer}/userinfo",
            "OIDC_OP_JWKS_ENDPOINT": f"{self.issuer}/jwks",
            "OIDC_OP_NAME": "Test provider",
        }

    def grpc_env(self, **extra: str) -> dict[str, str]:
        """The OIDC_GRPC_* variables that make a REAPI server trust this provider's JWTs."""
        return {
            "OIDC_GRPC_ISSUER": self.issuer,
            "OIDC_GRPC_AUDIENCE": GRPC_AUDIENCE,
            "OIDC_GRPC_JWKS_URL": f"{self.issuer}/jwks",
            **extra,
        }


class PortalServer:
    """`manage.py runserver` on a free port, with extra environment (e.g. the provider's),
    serving its static files with DEBUG off as `manage.py runall` does."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.log = Path(os.environ["DATA_DIR"]) / f"portal-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "PortalServer":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "manage.py"),
                    "runserver",
                    f"127.0.0.1:{self.port}",
                    "--noreload",
                    # WhiteNoise serves the collected, hashed files (runserver's own handler
                    # knows only the unhashed names the pages no longer use).
                    "--nostatic",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_http(f"{self.url}/login/", self.proc, self.log)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stop_process(self.proc, timeout=10)
