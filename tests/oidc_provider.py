"""A small but real OpenID provider for the tests, run as its own process on localhost.

    python tests/oidc_provider.py --config CONFIG.json --port PORT

It serves discovery, a JWKS read from a folder of RSA/EC private keys (re-read on every request,
so a test can rotate keys), an authorization endpoint with a login form, a token endpoint
(authorization code with PKCE S256 required; client credentials for CI runners, which get a
signed JWT for the audience they ask for) and UserInfo. Real crypto throughout (PyJWT and
cryptography); nothing is faked on the relying party's side.

CONFIG.json: {"issuer": URL, "keys_dir": PATH,
              "clients": [{"client_id", "client_secret", "redirect_uris": [...], "claims": {...}}],
              "users": [{"username", "password", "sub", "email", "email_verified", ...claims}]}
"""

import argparse
import base64
import hashlib
import html
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

CODE_SECONDS = 60
TOKEN_SECONDS = 300


class Provider:
    def __init__(self, config: dict[str, Any]) -> None:
        self.issuer = config["issuer"].rstrip("/")
        self.keys_dir = Path(config["keys_dir"])
        self.clients = {c["client_id"]: c for c in config["clients"]}
        self.users = {u["username"]: u for u in config["users"]}
        self.codes: dict[str, dict[str, Any]] = {}
        self.access_tokens: dict[str, dict[str, Any]] = {}
        self.jwks_fetches = 0
        self.lock = threading.Lock()

    # --- keys ---
    def keys(self) -> dict[str, Any]:
        found = {}
        for pem in sorted(self.keys_dir.glob("*.pem")):
            found[pem.stem] = serialization.load_pem_private_key(pem.read_bytes(), password=None)
        return found

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            self.jwks_fetches += 1
        out = []
        for kid, key in self.keys().items():
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                jwk.update(kid=kid, use="sig", alg="RS256")
            elif isinstance(key, ec.EllipticCurvePrivateKey):
                jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
                jwk.update(kid=kid, use="sig", alg="ES256")
            else:
                continue
            out.append(jwk)
        return {"keys": out}

    def sign(self, claims: dict[str, Any]) -> str:
        kid, key = next((k, v) for k, v in self.keys().items() if isinstance(v, rsa.RSAPrivateKey))
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "scopes_supported": ["openid", "email", "profile"],
        }

    def user_claims(self, user: dict[str, Any]) -> dict[str, Any]:
        hidden = {"username", "password"}
        claims = {k: v for k, v in user.items() if k not in hidden}
        claims.setdefault("preferred_username", user["username"])
        return claims


class Handler(BaseHTTPRequestHandler):
    server: "Server"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def provider(self) -> Provider:
        return self.server.provider

    # --- plumbing ---
    def send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def json(self, status: int, payload: dict[str, Any]) -> None:
        self.send(status, json.dumps(payload).encode(), "application/json")

    def oauth_error(self, status: int, error: str, description: str) -> None:
        self.json(status, {"error": error, "error_description": description})

    def form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        data = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
        return {k: v[0] for k, v in data.items()}

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    # --- routes ---
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/.well-known/openid-configuration":
            self.json(200, self.provider.discovery())
        elif url.path == "/jwks":
            self.json(200, self.provider.jwks())
        elif url.path == "/authorize":
            self.authorize_form(query, "")
        elif url.path == "/userinfo":
            self.userinfo()
        elif url.path == "/_stats":
            self.json(200, {"jwks_fetches": self.provider.jwks_fetches})
        else:
            self.send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/authorize":
            self.authorize_submit(self.form())
        elif url.path == "/token":
            self.token(self.form())
        else:
            self.send(404, b"not found", "text/plain")

    # --- authorization endpoint (OIDC Core 3.1.2) ---
    def check_request(self, params: dict[str, str]) -> str | None:
        client = self.provider.clients.get(params.get("client_id", ""))
        if client is None:
            return "unknown client_id"
        if params.get("redirect_uri") not in client["redirect_uris"]:
            return "redirect_uri is not registered for this client"
        if params.get("response_type") != "code":
            return "only response_type=code is supported"
        if "openid" not in params.get("scope", "").split():
            return "scope must include openid"
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return "PKCE with S256 is required"
        return None

    def authorize_form(self, params: dict[str, str], error: str) -> None:
        problem = self.check_request(params)
        if problem:
            self.send(400, f"<h1>Bad request</h1><p>{html.escape(problem)}</p>".encode(), "text/html")
            return
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k not in ("username", "password")
        )
        alert = f'<p role="alert" class="err">{html.escape(error)}</p>' if error else ""
        page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Test OpenID provider: sign in</title>
<style>body{{font:16px system-ui,sans-serif;background:#eef1f6;margin:0}}main{{max-width:22rem;margin:3rem auto;
background:#fff;padding:1.5rem;border-radius:8px;box-shadow:0 1px 4px #0002}}label{{display:block;font-weight:600;
margin-top:.8rem}}input[type=text],input[type=password]{{width:100%;padding:.5rem;box-sizing:border-box}}
button{{margin-top:1rem;padding:.5rem 1rem;background:#3b3b98;color:#fff;border:0;border-radius:4px}}
.err{{color:#b3261e}}</style></head><body><main><h1>Test provider</h1>
<p>Signing in to <strong>{html.escape(params.get("client_id", ""))}</strong></p>{alert}
<form method="post" action="/authorize">{hidden}
<label for="username">Username</label><input type="text" id="username" name="username" autocomplete="username">
<label for="password">Password</label><input type="password" id="password" name="password"
 autocomplete="current-password"><button type="submit">Sign in</button></form></main></body></html>"""
        self.send(200 if not error else 401, page.encode(), "text/html; charset=utf-8")

    def authorize_submit(self, params: dict[str, str]) -> None:
        problem = self.check_request(params)
        if problem:
            self.send(400, html.escape(problem).encode(), "text/plain")
            return
        user = self.provider.users.get(params.get("username", ""))
        if user is None or not secrets.compare_digest(user["password"], params.get("password", "")):
            self.authorize_form(params, "Wrong username or password.")
            return
        code = secrets.token_urlsafe(24)
        with self.provider.lock:
            self.provider.codes[code] = {
                "client_id": params["client_id"],
                "redirect_uri": params["redirect_uri"],
                "user": user,
                "nonce": params.get("nonce"),
                "challenge": params["code_challenge"],
                "expires": time.time() + CODE_SECONDS,
            }
        reply = {"code": code}
        if "state" in params:
            reply["state"] = params["state"]
        self.redirect(f"{params['redirect_uri']}?{urlencode(reply)}")

    # --- token endpoint (OIDC Core 3.1.3, RFC 7636 4.6, RFC 6749 4.4) ---
    def client_auth(self, form: dict[str, str]) -> dict[str, Any] | None:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        client = self.provider.clients.get(client_id)
        if client is None or not secrets.compare_digest(client["client_secret"], secret):
            return None
        return client

    def token(self, form: dict[str, str]) -> None:
        client = self.client_auth(form)
        if client is None:
            self.oauth_error(401, "invalid_client", "client authentication failed")
            return
        if form.get("grant_type") == "client_credentials":
            self.client_credentials(client, form)
            return
        if form.get("grant_type") != "authorization_code":
            self.oauth_error(400, "unsupported_grant_type", "use authorization_code or client_credentials")
            return
        with self.provider.lock:
            grant = self.provider.codes.pop(form.get("code", ""), None)
        if grant is None or grant["expires"] < time.time() or grant["client_id"] != client["client_id"]:
            self.oauth_error(400, "invalid_grant", "unknown, used or expired code")
            return
        if grant["redirect_uri"] != form.get("redirect_uri"):
            self.oauth_error(400, "invalid_grant", "redirect_uri does not match the authorization request")
            return
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or not secrets.compare_digest(challenge, grant["challenge"]):
            self.oauth_error(400, "invalid_grant", "PKCE code_verifier does not match the code_challenge")
            return
        now = int(time.time())
        user = grant["user"]
        claims = {
            "iss": self.provider.issuer,
            "aud": client["client_id"],
            "iat": now,
            "exp": now + TOKEN_SECONDS,
            "auth_time": now,
            **self.provider.user_claims(user),
        }
        if grant["nonce"]:
            claims["nonce"] = grant["nonce"]
        access = secrets.token_urlsafe(24)
        with self.provider.lock:
            self.provider.access_tokens[access] = user
        self.json(
            200,
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": TOKEN_SECONDS,
                "id_token": self.provider.sign(claims),
            },
        )

    def client_credentials(self, client: dict[str, Any], form: dict[str, str]) -> None:
        audience = form.get("audience", "")
        if not audience:
            self.oauth_error(400, "invalid_request", "say which audience the token is for")
            return
        now = int(time.time())
        claims = {
            "iss": self.provider.issuer,
            "sub": client["client_id"],
            "aud": audience,
            "iat": now,
            "exp": now + TOKEN_SECONDS,
            **client.get("claims", {}),
        }
        self.json(
            200,
            {"access_token": self.provider.sign(claims), "token_type": "Bearer", "expires_in": TOKEN_SECONDS},
        )

    def userinfo(self) -> None:
        header = self.headers.get("Authorization", "")
        user = self.provider.access_tokens.get(header[7:]) if header.startswith("Bearer ") else None
        if user is None:
            self.send(401, b"", "application/json", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        self.json(200, self.provider.user_claims(user))


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, provider: Provider) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.provider = provider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    provider = Provider(json.loads(Path(args.config).read_text()))
    Server(args.port, provider).serve_forever()


if __name__ == "__main__":
    main()
