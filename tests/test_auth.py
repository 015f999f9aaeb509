"""Access control: basic (bcrypt/Argon2 users file), bearer (static tokens, JWT), cookie/query tokens, expiry, no secrets in logs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import bcrypt
import jwt
import pytest
import pytest_twisted
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from sse_daemon.edge.auth import (
    Allowed, AuthConfigError, BasicAuth, BearerAuth, Credentials, Denied, JwtVerifier, PasswordCheck, build_authenticator,
    load_users, verify_password,
)
from sse_daemon.config.errors import ConfigError
from sse_daemon.connectors.sink.core import CONNECT_LOG_BURST
from sse_daemon.config.options import AccessOptions
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml

from .conftest import deadline, header, raw_request, status, subscribe, wait_for

PASSWORD = "correct horse battery staple"
ARGON_PASSWORD = "argon-pass-phrase-42"
STATIC_TOKEN = "static-token-0123456789abcdef"
HMAC_SECRET = "an-hmac-secret-of-thirty-two-bytes!!"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    fast = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    path.write_text(
        "# name:hash\n"
        f"alice:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
        f"bob:{fast.hash(ARGON_PASSWORD)}\n"
    )
    return path


def token(private: str, **claims: object) -> str:
    body = {"aud": "sse", "exp": NOW + 60, "streams": ["Events"], "sub": "carol", **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, private, algorithm="RS256")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------------- pure


def settled(auth: BasicAuth, credentials: Credentials, now: float) -> Allowed | Denied:
    """What the guard answers in the end: a PasswordCheck hashed (here, on this thread) and settled."""
    decision = auth.check(credentials, now)
    if isinstance(decision, PasswordCheck):
        decision = auth.settle(decision, verify_password(decision.hashed or next(iter(auth.users.values())), decision.password), now)
    return decision


@pytest.mark.reactor_free
def test_users_file_takes_bcrypt_and_argon2_only(users_file: Path, tmp_path: Path) -> None:
    auth = BasicAuth(load_users(str(users_file)), "r")
    first = auth.check(Credentials(basic=("alice", PASSWORD)), 0)
    assert isinstance(first, PasswordCheck) and PASSWORD not in repr(first), "a password is hashed elsewhere, never shown"
    assert settled(auth, Credentials(basic=("alice", PASSWORD)), 0).identity == "alice"
    assert auth.check(Credentials(basic=("alice", PASSWORD)), 0).identity == "alice", "cached the second time: no hash"
    assert settled(auth, Credentials(basic=("bob", ARGON_PASSWORD)), 0).identity == "bob"
    assert settled(auth, Credentials(basic=("alice", "wrong")), 0) == Denied(401, "bad-credentials", "wrong user name or password")
    assert settled(auth, Credentials(basic=("mallory", PASSWORD)), 0).reason == "bad-credentials", "alice's password is not mallory's"
    assert auth.check(Credentials(), 0).reason == "missing-credentials"
    plain = tmp_path / "plain"
    plain.write_text("alice:$2b$04$abc\n\ncarol:hunter2\n")
    with pytest.raises(AuthConfigError, match=r"plain:3: the password of 'carol' is not a bcrypt .* plain-text passwords are refused") as e:
        load_users(str(plain))
    assert e.value.option == "auth.users.file" and "hunter2" not in str(e.value)


@pytest.mark.reactor_free
def test_jwt_checks(rsa_keys) -> None:
    private, public = rsa_keys
    verifier = JwtVerifier(public, ["RS256"], "sse", None, "streams", "Events")
    good = verifier.check(token(private), NOW)
    assert good.identity == "jwt carol" and good.expires == NOW + 60
    assert verifier.check(token(private), NOW + 60).reason == "token-expired", "expiry follows the given clock"
    assert verifier.check(token(private, aud="other"), NOW).reason == "wrong-audience"
    assert verifier.check(token(private, exp=None), NOW).reason == "invalid-token"
    assert verifier.check(token(private, streams=["Other"]), NOW) == Denied(403, "stream-not-allowed", "the token does not grant stream Events (claim streams)")
    assert verifier.check(token(private, streams="Other Events"), NOW).identity == "jwt carol"
    assert verifier.check(token(private, streams=["*"]), NOW).identity == "jwt carol"
    assert verifier.check(token(private, nbf=NOW + 10), NOW).reason == "invalid-token"
    forged = jwt.encode({"aud": "sse", "exp": NOW + 60, "streams": ["*"]}, "a-guessed-secret-of-32-bytes-or-more", algorithm="HS256")
    assert verifier.check(forged, NOW).reason == "invalid-token", "an algorithm not listed is refused"
    unsigned = jwt.encode({"aud": "sse", "exp": NOW + 60, "streams": ["*"]}, None, algorithm="none")
    assert verifier.check(unsigned, NOW).reason == "invalid-token"


@pytest.mark.reactor_free
def test_bearer_static_tokens_from_env_and_config_errors(rsa_keys, tmp_path: Path) -> None:
    _, public = rsa_keys
    auth = build_authenticator(access(auth_type="bearer", auth_tokens_env="TOKENS"), "S", {"TOKENS": f"{STATIC_TOKEN}, {'y' * 20}"})
    assert isinstance(auth, BearerAuth)
    assert auth.check(Credentials(bearer=STATIC_TOKEN), 0).identity == "static token"
    assert auth.check(Credentials(bearer="x" * 20), 0).reason == "invalid-token"
    cases = [
        (access(auth_type="bearer"), "auth.type"),
        (access(auth_type="bearer", auth_tokens_env="NOPE"), "auth.tokens.env"),
        (access(auth_type="bearer", auth_tokens_env="SHORT"), "auth.tokens.env"),
        (access(auth_type="bearer", auth_jwt_key=public), "auth.jwt.audience"),
        (access(auth_type="bearer", auth_jwt_key=public, auth_jwt_audience="a", auth_jwt_algorithms=("HS256",)), "auth.jwt.key"),
        (access(auth_type="bearer", auth_jwt_key="k", auth_jwt_audience="a", auth_jwt_algorithms=("none",)), "auth.jwt.algorithms"),
        (access(auth_type="bearer", auth_jwt_key="short", auth_jwt_audience="a", auth_jwt_algorithms=("HS256",)), "auth.jwt.key"),
        (access(auth_type="basic"), "auth.users.file"),
        (access(auth_type="basic", auth_users_file=str(tmp_path / "missing")), "auth.users.file"),
    ]
    for options, option in cases:
        with pytest.raises(AuthConfigError) as e:
            build_authenticator(options, "S", {"SHORT": "abc"})
        assert e.value.option == option, options


@pytest.mark.reactor_free
def test_config_names_file_line_and_option(tmp_path: Path) -> None:
    plain = tmp_path / "users"
    plain.write_text("alice:secret\n")
    text = f"""\
sinks:
  S:
    type: sse-server
    schema: 'a string'
    server.port: 0
    auth.type: basic
    auth.users.file: {plain}
"""
    with pytest.raises(ConfigError) as e:
        validate(load_yaml(text, "conf.yaml"))
    (issue,) = e.value.issues
    assert str(issue).startswith(f"conf.yaml:7: sink 'S': option 'auth.users.file': {plain}:1: the password of 'alice' is not a bcrypt")
    assert ":secret" not in str(issue), "the file's content is not echoed"


# --------------------------------------------------------------------------- over sockets

SINK = """\
sinks:
  Events:
    type: sse-server
    schema: "n int"
    server.host: 127.0.0.1
    server.port: 0
    server.path: events
    heartbeat.interval: 0
    {extra}
sources:
  In:
    type: http
    stream: Events
    receiver.url: http://127.0.0.1:0/in
    {ingest}
"""


def config(ingest: dict | None = None, **extra: object) -> str:
    def block(options: dict) -> str:
        return "\n    ".join(f"{k}: {json.dumps(v) if isinstance(v, (list, bool)) else v}" for k, v in options.items())
    return SINK.format(extra=block(extra), ingest=block(ingest or {}))


async def get(port: int, path: str = "/events", headers: str = "", method: str = "GET") -> bytes:
    client = await raw_request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode())
    await deadline(client.closed)
    return bytes(client.received)


async def post(port: int, headers: str = "", data: bytes = b'{"n": 1}') -> bytes:
    client = await raw_request(port, f"POST /in HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(data)}\r\n{headers}\r\n".encode() + data)
    await deadline(client.closed)
    return bytes(client.received)


def assert_no_secret_logged(events: list[dict], *secrets: str) -> None:
    assert events, "something was logged"
    for event in events:
        text = (formatEvent(event) or "") + repr({k: v for k, v in event.items() if k != "log_logger"})
        for secret in secrets:
            assert secret not in text, f"a secret reached the log: {formatEvent(event)}"


@pytest_twisted.ensureDeferred
async def test_basic_auth_on_a_sink(daemon, users_file: Path, log_events) -> None:
    service = await daemon(config(**{"auth.type": "basic", "auth.users.file": users_file, "auth.realm": "events"}))
    port = service.port_of("Events")
    sink = service.sinks["Events"].sink
    missing = await get(port)
    assert status(missing) == 401
    assert header(missing, "WWW-Authenticate") == 'Basic realm="events", charset="UTF-8"'
    assert json.loads(missing.partition(b"\r\n\r\n")[2])["reason"] == "missing-credentials"
    wrong = await get(port, headers=f"Authorization: {basic('alice', 'not-it')}\r\n")
    assert status(wrong) == 401
    assert status(await get(port, method="HEAD")) == 401, "HEAD is protected too"
    assert status(await get(port, headers="Authorization: Basic !!notbase64\r\n")) == 401
    for user, password in (("alice", PASSWORD), ("bob", ARGON_PASSWORD)):
        client = await subscribe(port, headers=f"Authorization: {basic(user, password)}\r\n")
        await client.close()
    assert sink.rejected == {"missing-credentials": 2, "bad-credentials": 2}
    assert sink.counters["connections_opened"] == 2
    assert_no_secret_logged(log_events, PASSWORD, "not-it", ARGON_PASSWORD, basic("alice", PASSWORD).split()[1])


@pytest_twisted.ensureDeferred
async def test_jwt_from_header_cookie_or_query_and_close_at_expiry(daemon, rsa_keys, tmp_path: Path, log_events) -> None:
    private, public = rsa_keys
    key_file = tmp_path / "jwt.pem"
    key_file.write_text(public)
    clock = Clock()
    clock.advance(NOW)
    options = {"auth.type": "bearer", "auth.jwt.key.file": key_file, "auth.jwt.audience": "sse", "auth.cookie": "sse_token"}
    service = await daemon(config(**options), clock=clock)
    port = service.port_of("Events")
    sink = service.sinks["Events"].sink
    good = token(private)
    assert header(await get(port), "WWW-Authenticate") == 'Bearer realm="sse-daemon"'
    expired = await get(port, headers=f"Authorization: Bearer {token(private, exp=NOW - 1)}\r\n")
    assert status(expired) == 401 and header(expired, "WWW-Authenticate") == 'Bearer realm="sse-daemon", error="invalid_token"'
    other = await get(port, headers=f"Authorization: Bearer {token(private, streams=['Other'])}\r\n")
    assert status(other) == 403 and header(other, "WWW-Authenticate").endswith('error="insufficient_scope"')
    assert status(await get(port, path=f"/events?access_token={good}")) == 401, "the query parameter is off by default"
    by_header = await subscribe(port, headers=f"Authorization: Bearer {good}\r\n")
    by_cookie = await subscribe(port, headers=f"Cookie: theme=dark; sse_token={token(private, exp=NOW + 30)}\r\n")
    clock.advance(29)
    assert not by_cookie.is_closed
    clock.advance(1)  # the cookie's token expires: its stream ends, the other goes on
    await wait_for(lambda: by_cookie.is_closed, what="the expired stream to end")
    assert b": access token expired; reconnect with a new one\n" in by_cookie.received
    assert by_cookie.received.endswith(b"0\r\n\r\n") and not by_header.is_closed
    clock.advance(30)
    await wait_for(lambda: by_header.is_closed, what="the header token's stream to end")
    assert sink.counters["closed_token_expired"] == 2
    assert sink.rejected == {"missing-credentials": 2, "token-expired": 1, "stream-not-allowed": 1}
    assert_no_secret_logged(log_events, good.split(".")[2], good)


@pytest_twisted.ensureDeferred
async def test_query_token_when_allowed(daemon, tmp_path: Path) -> None:
    secret = tmp_path / "hmac"
    secret.write_text(HMAC_SECRET + "\n")
    clock = Clock()
    clock.advance(NOW)
    service = await daemon(config(**{"auth.type": "bearer", "auth.jwt.key.file": secret, "auth.jwt.algorithms": "HS256",
                                     "auth.jwt.audience": "sse", "auth.query.token": True}), clock=clock)
    hs = jwt.encode({"aud": "sse", "exp": NOW + 60, "streams": "*"}, HMAC_SECRET, algorithm="HS256")
    client = await subscribe(service.port_of("Events"), path=f"/events?access_token={hs}&lastEventId=5")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_ingest_with_a_static_token_from_the_environment(daemon, rsa_keys, monkeypatch, log_events) -> None:
    monkeypatch.setenv("SSE_TEST_TOKENS", f"{STATIC_TOKEN},another-long-token-xyz")
    service = await daemon(config(ingest={"auth.type": "bearer", "auth.tokens.env": "SSE_TEST_TOKENS"}))
    port = service.port_of("In")
    listener = await subscribe(port)  # the sink itself is open
    assert status(await post(port)) == 401
    assert status(await post(port, headers="Authorization: Bearer wrong-token-but-long-enough\r\n")) == 401
    assert status(await post(port, headers=f"Authorization: Bearer {STATIC_TOKEN}\r\n")) == 200
    await listener.wait_for(b'"n":1')
    await listener.close()
    assert service.sources["In"].rejected == {"missing-credentials": 1, "invalid-token": 1}
    assert_no_secret_logged(log_events, STATIC_TOKEN, "wrong-token-but-long-enough")


def access(**given: object) -> AccessOptions:
    """A connector's access options: the table's defaults but for ``given``."""
    return AccessOptions.with_defaults(**given)


@pytest_twisted.ensureDeferred
async def test_tokens_that_expire_together_do_not_flood_the_log(daemon, rsa_keys, tmp_path: Path, log_events) -> None:
    """A line per expired stream was written unsampled: tokens minted together end their streams together."""
    private, public = rsa_keys
    key_file = tmp_path / "jwt.pem"
    key_file.write_text(public)
    clock = Clock()
    clock.advance(NOW)
    service = await daemon(config(**{"auth.type": "bearer", "auth.jwt.key.file": key_file, "auth.jwt.audience": "sse"}), clock=clock)
    port = service.port_of("Events")
    sink = service.sinks["Events"].sink
    shared = token(private, exp=NOW + 30)
    streams = [await subscribe(port, headers=f"Authorization: Bearer {shared}\r\n") for _ in range(CONNECT_LOG_BURST + 20)]
    clock.advance(30)
    await wait_for(lambda: all(s.is_closed for s in streams), what="every expired stream to end")
    assert sink.counters["closed_token_expired"] == len(streams)
    expiry_lines = [e for e in log_events if "access token expired" in (formatEvent(e) or "")]
    assert 0 < len(expiry_lines) <= CONNECT_LOG_BURST
