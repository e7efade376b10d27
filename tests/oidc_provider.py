"""A real OAuth 2 / OIDC provider on loopback for the tests (authlib's server side on Flask).

- `POST /oidc/token`: client_credentials (Weightron-style confidential client, secret in the
  form or HTTP Basic; `require_basic(client_id)`: HTTP Basic only, the form answered
  `invalid_client` as RFC 6749 section 5.2 has it), password (Biotz-style public client; scope openid adds an id_token,
  an RS256-signed JWT) and refresh_token grants. Client secrets and user passwords are
  checked; token lifetime is `provider.lifetime` seconds (changeable while running).
- `GET /access`: Weightron's application list; needs a live Bearer token and `x-api-key`.
- `GET /jwks`: the id_token signing key.
- Counters: `token_requests` (every POST to the token endpoint), `issued`, `access_requests`.
  `delay_s` makes the token endpoint slow, so concurrent callers really overlap.

Run it with `OIDCProvider().start()` (werkzeug threaded server in a daemon thread, HTTPS with
a throwaway CA: `provider.ca_pem`); `python -m tests.oidc_provider` runs one in the
foreground for poking at by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from flask import Flask, jsonify, request
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

from tests.certs import make_pki
from tests.services import free_port

WEIGHTRON_CLIENT = ("weightron-reseller-client", "s3cret-client-secret-0123456789")
WEIGHTRON_API_KEY = "api-key-abcdef0123456789"
BIOTZ_CLIENT = "biotz-platform-devices"
BIOTZ_USER = ("dev-42@devices.data-ingestion.biotz.io", "biotz-device-pa55word")


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str | None
    grant_types: tuple
    scope: str = ""
    auth_methods: tuple = ("client_secret_basic", "client_secret_post")

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        if not scope:
            return self.scope
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return self.client_secret is not None and secrets.compare_digest(
            client_secret, self.client_secret
        )

    def check_endpoint_auth_method(self, method, endpoint):
        if self.client_secret is None:
            return method == "none"
        return method in self.auth_methods

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


@dataclass
class Issued:
    access_token: str
    client_id: str
    user: str | None
    scope: str
    expires_at: float
    refresh_token: str | None = None
    revoked: bool = False

    # what RefreshTokenGrant asks of a token
    def check_client(self, client):
        return client.client_id == self.client_id

    def get_scope(self):
        return self.scope

    def is_expired(self):
        return False

    def is_revoked(self):
        return self.revoked


@dataclass
class OIDCProvider:
    lifetime: float = 300.0
    delay_s: float = 0.0
    issuer: str = ""
    applications: list = field(default_factory=list)
    token_requests: int = 0
    issued: int = 0
    access_requests: int = 0
    refused: int = 0

    def __post_init__(self):
        # authlib's server grants log issued tokens at DEBUG; keep them out of the tests' logs
        # (the client side, ours, is what the "never logged" tests look at)
        logging.getLogger("authlib.oauth2.rfc6749.grants").setLevel(logging.INFO)
        self._lock = threading.Lock()
        self.tokens: dict[str, Issued] = {}
        self.refresh_tokens: dict[str, Issued] = {}
        self.clients = {
            WEIGHTRON_CLIENT[0]: Client(WEIGHTRON_CLIENT[0], WEIGHTRON_CLIENT[1],
                                        ("client_credentials",), "openid offline_access"),
            BIOTZ_CLIENT: Client(BIOTZ_CLIENT, None, ("password", "refresh_token"),
                                 "openid profile"),
        }
        self.users = {BIOTZ_USER[0]: BIOTZ_USER[1]}
        self.api_keys = {WEIGHTRON_API_KEY}
        self.reject_ingest = 0
        self.ingested: list = []
        self.ingest_log: list = []
        now = time.time()
        if not self.applications:
            self.applications = [
                {"_id": "app-old-expired", "name": "last year", "expiry": now - 86400,
                 "company": {"name": "Acme"}},
                {"_id": "app-5f1e2d", "name": "greenhouses",
                 "expiry": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 86400 * 300)),
                 "company": {"name": "Acme"}},
            ]
        self.jwk = RSAKey.generate_key(2048, parameters={"kid": "test-1"})
        self._server = None
        self._thread = None
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="uplink-oidc-"))
        self.pki = make_pki(self.dir / "pki", ca_name="Uplink Test OIDC CA")
        self.ca_pem = str(self.pki.ca_pem)
        self.app = self._make_app()

    def require_basic(self, client_id: str) -> None:
        """The client may authenticate with HTTP Basic only (client_secret_basic)."""
        self.clients[client_id].auth_methods = ("client_secret_basic",)

    # -- URLs ----------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return self.base + "/oidc/token"

    @property
    def access_url(self) -> str:
        return self.base + "/access"

    # -- controls used by tests ----------------------------------------------------------
    def revoke_all(self) -> None:
        """End every session: access and refresh tokens stop working."""
        with self._lock:
            for t in self.tokens.values():
                t.revoked = True

    def token_valid(self, access_token: str) -> bool:
        with self._lock:
            t = self.tokens.get(access_token)
            return bool(t and not t.revoked and t.expires_at > time.time())

    def reset_counters(self) -> None:
        with self._lock:
            self.token_requests = self.issued = self.access_requests = self.refused = 0

    # -- the Flask app -------------------------------------------------------------------
    def _make_app(self) -> Flask:
        app = Flask("uplink-test-oidc")
        provider = self

        def query_client(client_id):
            return provider.clients.get(client_id)

        def save_token(token, req):
            user = getattr(req, "user", None)
            scope = token.get("scope", "")
            rec = Issued(token["access_token"], req.client.client_id, user, scope,
                         time.time() + float(token["expires_in"]), token.get("refresh_token"))
            if user and "openid" in scope.split():
                token["id_token"] = provider._id_token(user, req.client.client_id)
            with provider._lock:
                provider.tokens[rec.access_token] = rec
                if rec.refresh_token:
                    provider.refresh_tokens[rec.refresh_token] = rec
                provider.issued += 1

        server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
        server.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **kw: secrets.token_urlsafe(48),
                refresh_token_generator=lambda **kw: secrets.token_urlsafe(48),
                expires_generator=lambda client, grant_type: int(provider.lifetime),
            ),
        )

        class ClientCredentials(grants.ClientCredentialsGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        class Password(grants.ResourceOwnerPasswordCredentialsGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

            def authenticate_user(self, username, password):
                want = provider.users.get(username)
                if want is not None and secrets.compare_digest(want, password):
                    return username
                return None

        class Refresh(grants.RefreshTokenGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
            INCLUDE_NEW_REFRESH_TOKEN = True

            def authenticate_refresh_token(self, refresh_token):
                with provider._lock:
                    t = provider.refresh_tokens.get(refresh_token)
                return t if t and not t.revoked else None

            def authenticate_user(self, credential):
                return credential.user

            def revoke_old_credential(self, credential):
                credential.revoked = True

        server.register_grant(ClientCredentials)
        server.register_grant(Password)
        server.register_grant(Refresh)

        @app.post("/oidc/token")
        def token():
            with provider._lock:
                provider.token_requests += 1
            if provider.delay_s:
                time.sleep(provider.delay_s)
            if (request.form.get("grant_type") == "client_credentials"
                    and "openid" not in request.form.get("scope", "").split()):
                # Weightron (docs.weightron.cloud, Authentication): "openid is required for
                # all requests"; offline_access is the only other scope
                with provider._lock:
                    provider.refused += 1
                return jsonify({"error": "invalid_scope",
                                "error_description": "openid is required"}), 400
            resp = server.create_token_response()
            if resp.status_code != 200:
                with provider._lock:
                    provider.refused += 1
            return resp

        @app.get("/access")
        def access():
            with provider._lock:
                provider.access_requests += 1
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or not provider.token_valid(auth[7:]):
                return jsonify({"message": "Unauthorized"}), 401
            if request.headers.get("x-api-key") not in provider.api_keys:
                return jsonify({"message": "Forbidden"}), 403
            return jsonify({"timestamp": int(time.time() * 1000), "data": provider.applications})

        @app.post("/api/device/publish/data/<message_type>")
        def ingest(message_type):
            """Biotz-style HTTP ingestion: Bearer must be a live id_token issued here."""
            auth = request.headers.get("Authorization", "")
            fp = hashlib.sha256(auth[7:].encode()).hexdigest()[:16]
            with provider._lock:
                reject = provider.reject_ingest > 0
                if reject:
                    provider.reject_ingest -= 1
            ok = False
            if auth.startswith("Bearer ") and not reject:
                try:
                    provider.verify_id_token(auth[7:])
                    ok = True
                except Exception:
                    ok = False
            with provider._lock:
                provider.ingest_log.append({"type": message_type, "token": fp, "ok": ok})
                if ok:
                    provider.ingested.append(request.get_json(force=True))
            if not ok:
                return jsonify({"message": "Unauthorized"}), 401
            return "", 204

        @app.get("/test/ingested")
        def ingested():
            with provider._lock:
                return jsonify({"bodies": provider.ingested, "log": provider.ingest_log})

        @app.post("/test/reject-ingest/<int:n>")
        def reject_ingest(n):
            with provider._lock:
                provider.reject_ingest = n
                provider.ingested, provider.ingest_log = [], []
            return "", 204

        @app.get("/test/long-header")
        def long_header():
            return "ok", 200, {"Content-Security-Policy": "default-src 'self' " + "x" * 3000}

        @app.get("/jwks")
        def jwks():
            return jsonify({"keys": [self.jwk.as_dict(private=False)]})

        return app

    def _id_token(self, user: str, client_id: str) -> str:
        now = int(time.time())
        claims = {"iss": self.base + "/oidc", "sub": user, "aud": client_id, "iat": now,
                  "exp": now + int(self.lifetime), "preferred_username": user,
                  "jti": secrets.token_hex(8)}
        header = {"alg": "RS256", "kid": "test-1"}
        return jwt.encode(header, claims, self.jwk)

    def verify_id_token(self, token: str) -> dict:
        """Signature, then exp/iat (raises when invalid or expired)."""
        tok = jwt.decode(token, self.jwk, algorithms=["RS256"])
        jwt.JWTClaimsRegistry(exp={"essential": True}, sub={"essential": True}).validate(tok.claims)
        return dict(tok.claims)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "OIDCProvider":
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.pki.cert_pem), str(self.pki.key_pem))
        self.port = free_port()
        self.issuer = self.base + "/oidc"
        self._server = make_server("127.0.0.1", self.port, self.app, threaded=True, ssl_context=ctx)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def env(self) -> dict:
        """For firmware tests that say NEEDS = ("oidc",)."""
        return {"OIDC_TOKEN_URL": self.token_url, "OIDC_ACCESS_URL": self.access_url}


class RelayThread:
    """A host_tools Relay serving from its own asyncio loop in a daemon thread."""

    def __init__(self, relay):
        self.relay = relay
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> int:
        self.thread.start()
        return self.call(self.relay.start())

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.call(self.relay.stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


class OIDCService:
    """Provider + token relay + Biotz-like ingestion, for firmware tests (NEEDS = ("oidc",)).

    Devices: `wt-1` (Weightron-style, client_credentials + /access), `bz-1` (Biotz-style,
    password grant; its credential is the id_token). Their relay keys are in env().
    """

    def __init__(self, lifetime: float = 300.0, min_life_s: float = 60.0,
                 fresh_floor_s: float = 0.0, **relay_settings):
        from host_tools import oidc, relay, relay_pki

        self.provider = OIDCProvider(lifetime=lifetime)
        self.keys = {"wt-1": secrets.token_hex(32), "bz-1": secrets.token_hex(32)}
        self._mods = (oidc, relay, relay_pki)
        self.min_life_s = min_life_s
        self.fresh_floor_s = fresh_floor_s
        self.relay_settings = relay_settings
        self.relay_thread: RelayThread | None = None
        self.sources: dict = {}

    def start(self) -> "OIDCService":
        oidc, relay, relay_pki = self._mods
        p = self.provider.start()
        self.pki = relay_pki.ensure_relay_pki(p.dir / "relay", ["localhost", "127.0.0.1"])
        self.sources = {
            "wt-1": oidc.WeightronSource(oidc.ClientCredentialsSettings(
                p.token_url, *WEIGHTRON_CLIENT, api_key=WEIGHTRON_API_KEY,
                access_url=p.access_url, ca=p.ca_pem)),
            "bz-1": oidc.BiotzSource(oidc.PasswordSettings(
                p.token_url, BIOTZ_CLIENT, *BIOTZ_USER, ca=p.ca_pem)),
        }
        settings = relay.RelaySettings(self.pki.cert_pem, self.pki.key_pem, host="127.0.0.1",
                                       port=0, min_life_s=self.min_life_s,
                                       fresh_floor_s=self.fresh_floor_s,
                                       **self.relay_settings)
        devices = [relay.RelayDevice(n, self.keys[n], self.sources[n]) for n in self.keys]
        self.relay_thread = RelayThread(relay.Relay(settings, devices))
        self.port = self.relay_thread.start()
        return self

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def stop(self) -> None:
        if self.relay_thread:
            for s in self.sources.values():
                self.relay_thread.call(s.aclose())
            self.relay_thread.stop()
        self.provider.stop()

    def env(self) -> dict:
        return {
            "RELAY_URL": self.url,
            "RELAY_CA_DER": str(self.pki.ca_der),
            "RELAY_WT_KEY": self.keys["wt-1"],
            "RELAY_BZ_KEY": self.keys["bz-1"],
            "OIDC_BASE": self.provider.base,
            "OIDC_CA_DER": str(self.provider.pki.ca_der),
        }


if __name__ == "__main__":
    p = OIDCProvider().start()
    print("token endpoint:", p.token_url, " CA:", p.ca_pem)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        p.stop()
