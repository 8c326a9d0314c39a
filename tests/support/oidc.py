"""Fixtures' helpers for OpenID Connect: the test provider (panva's certified oidc-provider, run by
tests/oidc-provider/provider.mjs under Node) and a real portal process configured against it.
Both run as child processes on free loopback ports, are waited for, and always stopped."""

import json
import os
import shutil
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

from tests.support.servers import ROOT, free_port, stop_process

CLIENT_ID = "portal"
CLIENT_SECRET = "portal-secret-" + uuid.uuid4().hex
CI_CLIENT_ID = "ci-runner"
CI_CLIENT_SECRET = "ci-secret-" + uuid.uuid4().hex
CI_CLAIMS = {"repository": "acme/app", "ref": "refs/heads/main"}
# RFC 8707 2: a resource indicator, and so the audience CI tokens are asked for, is an absolute URI.
GRPC_AUDIENCE = "urn:reapi:test"
PROVIDER_DIR = ROOT / "tests" / "oidc-provider"


def _node() -> str:
    """Node and the provider's npm packages, or a failure that says how to get them."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError(
            "the test OpenID provider needs Node.js (`node` is not on PATH): run `make test-deps`"
        )
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        raise RuntimeError(
            f"the test OpenID provider's packages are not in {PROVIDER_DIR}/node_modules: run `make test-deps`"
        )
    return node


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
    """The test OpenID provider with one RSA signing key, a portal client and a CI client.

    Its endpoints are the ones its discovery document names (OpenID Connect Discovery 1.0, 3),
    read once it is up."""

    def __init__(self, users: list[dict[str, Any]], redirect_uris: list[str] | None = None) -> None:
        self.node = _node()
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="oidc-", dir=os.environ.get("DATA_DIR")))
        self.keys_dir = self.dir / "keys"
        self.keys_dir.mkdir()
        self.users = users
        self.redirect_uris = redirect_uris or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "provider.log"
        self.discovery: dict[str, Any] = {}
        self.kid = self.add_key()

    def add_key(self, kind: str = "rsa") -> str:
        """A new signing key, published in the JWKS from now on; returns its kid.

        oidc-provider takes its keys when it is built: a running provider is rebuilt with the
        new key set, on the same port, as a restart would."""
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
        if self.proc is not None and self.proc.poll() is None:
            reply = requests.post(f"{self.issuer}/_test/reload-keys", timeout=10)
            reply.raise_for_status()
            assert kid in reply.json()["kids"], reply.text
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
            "port": self.port,
            "keys_dir": str(self.keys_dir),
            # oidc-provider's client metadata (OpenID Connect Dynamic Client Registration 1.0, 2).
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "redirect_uris": self.redirect_uris,
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                    # mozilla-django-oidc sends the secret in the form unless told otherwise.
                    "token_endpoint_auth_method": "client_secret_post",
                },
                {
                    "client_id": CI_CLIENT_ID,
                    "client_secret": CI_CLIENT_SECRET,
                    "redirect_uris": [],
                    "grant_types": ["client_credentials"],
                    "response_types": [],
                    "token_endpoint_auth_method": "client_secret_basic",
                    "token_claims": CI_CLAIMS,
                },
            ],
            "resources": [GRPC_AUDIENCE],
            "users": self.users,
        }
        (self.dir / "config.json").write_text(json.dumps(config))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.node, str(PROVIDER_DIR / "provider.mjs"), str(self.dir / "config.json")],
                cwd=PROVIDER_DIR,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            discovery_url = f"{self.issuer}/.well-known/openid-configuration"
            _wait_http(discovery_url, self.proc, self.log)
            self.discovery = requests.get(discovery_url, timeout=5).json()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def authorization_endpoint(self) -> str:
        return str(self.discovery["authorization_endpoint"])

    def jwks_fetches(self) -> int:
        """How many times the JWKS was fetched (the provider's wrapper counts them)."""
        return int(requests.get(f"{self.issuer}/_test/stats", timeout=5).json()["jwks_fetches"])

    def client_credentials_token(self, audience: str = GRPC_AUDIENCE) -> str:
        """A CI token from the provider: RFC 6749 4.4, for the resource `audience` (RFC 8707)."""
        reply = requests.post(
            self.discovery["token_endpoint"],
            data={"grant_type": "client_credentials", "resource": audience},
            auth=(CI_CLIENT_ID, CI_CLIENT_SECRET),
            timeout=5,
        )
        assert reply.status_code == 200, reply.text
        return str(reply.json()["access_token"])

    def portal_env(self) -> dict[str, str]:
        """The OIDC_* variables that point the portal's login at this provider (README)."""
        return {
            "OIDC_RP_CLIENT_ID": CLIENT_ID,
            "OIDC_RP_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_OP_ISSUER": self.issuer,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": self.authorization_endpoint,
            "OIDC_OP_TOKEN_ENDPOINT": self.discovery["token_endpoint"],
            "OIDC_OP_USER_ENDPOINT": self.discovery["userinfo_endpoint"],
            "OIDC_OP_JWKS_ENDPOINT": self.discovery["jwks_uri"],
            "OIDC_OP_NAME": "Test provider",
        }

    def grpc_env(self, **extra: str) -> dict[str, str]:
        """The OIDC_GRPC_* variables that make a REAPI server trust this provider's JWTs."""
        return {
            "OIDC_GRPC_ISSUER": self.issuer,
            "OIDC_GRPC_AUDIENCE": GRPC_AUDIENCE,
            "OIDC_GRPC_JWKS_URL": self.discovery["jwks_uri"],
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
                    # Static files by WhiteNoise, as in production (content-hashed names from
                    # the collected manifest), not by runserver's own handler.
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
