"""Access control for sinks and ingests (pure: credentials in, a decision out).

``auth.type`` picks an authenticator:

- ``none``: everyone (the default);
- ``basic``: users from ``auth.users.file``, one ``name:hash`` a line, each
  hash bcrypt (``$2b$...``) or Argon2 (``$argon2id$...``); plain-text
  passwords are refused when the file is loaded;
- ``bearer``: static tokens (``auth.tokens.file``, ``auth.tokens.env``) and/or
  JWTs verified against ``auth.jwt.key``/``auth.jwt.key.file`` with the
  listed algorithms, a required ``exp``, the configured ``aud`` (and ``iss``),
  and a claim (``auth.jwt.claim``) naming the streams the token may read (a
  sink) or write (an ingest).

The files and variables the options name are read by config/credentials.py
(so that validation reports their problems); this module builds on what it returns.
Nothing here logs or keeps a secret: static tokens are held as SHA-256
digests, verified passwords are cached under an HMAC with a per-process key
(for ``auth.cache.ttl`` seconds), and every denial carries a fixed ``reason``
and a message without the secret. Nothing here hashes a password on the
caller's thread either: ``BasicAuth.check`` hands out a ``PasswordCheck``
that passwords.py runs in a thread pool, then gives back to ``settle``.
Times come from the caller's clock (``now``), so token expiry follows the
daemon's injected clock rather than PyJWT's wall clock.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol

from sse_daemon.config.credentials import (
    ARGON2_PREFIXES,
    BCRYPT_PREFIXES,
    AccessSecrets,
    AuthConfigError,
    check_jwt_key,
    load_access,
    load_tokens,
    load_users,
    token_digest,
)
from sse_daemon.config.options import DEFAULT_CACHE_TTL, DEFAULT_FAILURES_PER_MINUTE, AccessOptions

__all__ = [
    "AuthConfigError", "Credentials", "Allowed", "Denied", "Authenticator",
    "NoAuth", "BasicAuth", "BearerAuth", "JwtVerifier", "PasswordCheck", "VerifiedCache", "Padding", "hash_kind",
    "verify_password", "load_users", "load_tokens", "build_authenticator",
    "DEFAULT_CACHE_TTL", "DEFAULT_FAILURES_PER_MINUTE", "BCRYPT_PREFIXES", "ARGON2_PREFIXES",
]

#: verified (user, password) pairs remembered so bcrypt's ~0.25 s is not paid on every reconnect
VERIFIED_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presented. ``bearer_from`` says where a token came from (header, cookie, query)."""

    basic: tuple[str, str] | None = None
    bearer: str | None = None
    bearer_from: str = ""

    def __repr__(self) -> str:  # never show a secret, even in a traceback
        return f"Credentials(basic={'<user>' if self.basic else None}, bearer={'<token>' if self.bearer else None}, bearer_from={self.bearer_from!r})"


@dataclass(frozen=True, slots=True)
class Allowed:
    identity: str  # a user name, "static token", or a JWT's subject; safe to log
    expires: float | None = None  # when the right to stay connected ends (a JWT's exp)


@dataclass(frozen=True, slots=True)
class Denied:
    status: int  # 401: who are you?  403: you may not  429/503: not now
    reason: str  # a fixed set: metric labels
    message: str  # safe to show and log
    retry_after: int = 0  # seconds, sent as Retry-After when above 0


class Authenticator(Protocol):
    @property
    def challenge(self) -> str | None:
        """The WWW-Authenticate challenge sent with a 401 (None: no auth)."""

    def check(self, credentials: Credentials, now: float) -> Allowed | Denied | PasswordCheck: ...


class NoAuth:
    challenge = None

    def check(self, credentials: Credentials, now: float) -> Allowed | Denied:
        return Allowed("anonymous")


# --------------------------------------------------------------------------- basic


def verify_password(hashed: str, password: str) -> bool:
    """bcrypt or Argon2, by the hash's prefix: CPU-heavy (0.1-0.3 s), so never on the reactor (passwords.py)."""
    if hashed.startswith(BCRYPT_PREFIXES):
        import bcrypt

        try:
            return bcrypt.checkpw(password.encode("utf-8", "surrogatepass"), hashed.encode("ascii"))
        except ValueError:
            return False
    from argon2 import PasswordHasher
    from argon2.exceptions import Argon2Error, InvalidHashError

    try:
        return PasswordHasher().verify(hashed, password.encode("utf-8", "surrogatepass"))
    except (Argon2Error, InvalidHashError):
        return False


def hash_kind(hashed: str) -> str:
    """The algorithm and cost parameters of a hash, without its salt and digest: hashes of one
    kind cost the same to verify (``$2b$12$``, ``$argon2id$v=19$m=65536,t=3,p=4$``)."""
    if hashed.startswith(BCRYPT_PREFIXES):
        return hashed[:7]
    return "$".join(hashed.split("$")[:-2]) + "$"


@dataclass(frozen=True, slots=True)
class PasswordCheck:
    """A password that must be hashed to be checked (passwords.py runs it off the reactor).

    ``hashed`` is None for an unknown user: it is checked against a decoy of the most
    expensive kind, so its answer takes as long as anyone's. ``key`` is the credential's
    HMAC: the cache's key and the key that joins identical checks in flight.
    """

    user: str
    password: str
    hashed: str | None
    key: bytes

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"PasswordCheck(user=<user>, known={self.hashed is not None})"


class VerifiedCache:
    """Credentials verified in the last ``ttl`` seconds, by HMAC (never the password), at most ``size``."""

    def __init__(self, ttl: float, size: int = VERIFIED_CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._until: OrderedDict[bytes, float] = OrderedDict()  # oldest first: same ttl for all

    def __len__(self) -> int:
        return len(self._until)

    def hit(self, key: bytes, now: float) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if now >= until:
            del self._until[key]
            return False
        return True

    def add(self, key: bytes, now: float) -> None:
        if self.ttl <= 0:
            return
        self._until.pop(key, None)
        self._until[key] = now + self.ttl
        while self._until and (len(self._until) > self.size or next(iter(self._until.values())) <= now):
            self._until.popitem(last=False)


class Padding:
    """How long to hold a password check's answer so that it does not tell which user exists.

    ``costs`` are the seconds one verification of each hash kind took when timed at load.
    Every check is answered no sooner than the most expensive kind takes (``target``) times
    ``load``: how much slower than at load that kind runs now, a moving average over the
    checks of that kind (an unknown user is checked against ``decoy``, a hash of that kind,
    so a stream of guesses keeps it current). A cheap hash under load is then held as long
    as the expensive one would take under the same load, without scaling its own jitter.
    """

    #: weight of the newest check in ``load``
    SMOOTHING = 0.2

    def __init__(self, costs: Mapping[str, float], examples: Mapping[str, str]) -> None:
        self.costs = {kind: max(cost, 1e-6) for kind, cost in costs.items()}
        self.slowest = max(self.costs, key=self.costs.__getitem__)
        self.target = self.costs[self.slowest]
        self.decoy = examples[self.slowest]
        self.load = 1.0

    def delay(self, kind: str, elapsed: float) -> float:
        """Seconds to wait after a check of ``kind`` whose hash took ``elapsed`` seconds."""
        if kind == self.slowest:
            self.load += self.SMOOTHING * (max(1.0, elapsed / self.target) - self.load)
        return max(0.0, self.target * self.load - elapsed)


class BasicAuth:
    """Users of a users file; a password check is handed out (``PasswordCheck``) to be hashed
    elsewhere and its outcome given back to ``settle``. A verified credential is then
    remembered for ``cache_ttl`` seconds (``auth.cache.ttl``), so a reconnect is not hashed again."""

    def __init__(self, users: Mapping[str, str], realm: str, cache_ttl: float = DEFAULT_CACHE_TTL) -> None:
        self.users = dict(users)
        self.challenge = f'Basic realm="{realm}", charset="UTF-8"'
        self._key = secrets.token_bytes(32)
        self.verified = VerifiedCache(cache_ttl)

    def kinds(self) -> dict[str, str]:
        """One hash of each kind in the file: what passwords.py times to pad every answer alike."""
        found: dict[str, str] = {}
        for hashed in self.users.values():
            found.setdefault(hash_kind(hashed), hashed)
        return found

    def remember_from(self, previous: BasicAuth) -> None:
        """Take over the passwords ``previous`` verified (fresh credentials at a reload): a user whose entry is
        unchanged is not hashed again at the next reconnect. A changed or removed entry's key differs (the
        hash is in the HMAC), so what was verified against it no longer counts."""
        self._key, self.verified = previous._key, previous.verified

    def check(self, credentials: Credentials, now: float) -> Allowed | Denied | PasswordCheck:
        if credentials.basic is None:
            return Denied(401, "missing-credentials", "this stream needs a user name and password")
        user, password = credentials.basic
        hashed = self.users.get(user)
        key = hmac.new(self._key, b"\0".join(s.encode("utf-8", "surrogatepass") for s in (user, password, hashed or "")), "sha256").digest()
        if hashed is not None and self.verified.hit(key, now):
            return Allowed(user)
        return PasswordCheck(user, password, hashed, key)

    def settle(self, check: PasswordCheck, verified: bool, now: float) -> Allowed | Denied:
        """The answer to a check once hashed: ``verified`` is the hash's verdict."""
        if not verified or check.hashed is None:
            return Denied(401, "bad-credentials", "wrong user name or password")
        self.verified.add(check.key, now)
        return Allowed(check.user)


# --------------------------------------------------------------------------- bearer


class JwtVerifier:
    """Checks a JWT's signature (key, algorithms), ``exp`` (required), ``nbf``, ``aud``, ``iss`` and stream claim."""

    def __init__(self, key: str, algorithms: Iterable[str], audience: str, issuer: str | None,
                 claim: str, stream: str, leeway: float = 0.0) -> None:
        import jwt

        self.algorithms = list(algorithms)
        check_jwt_key(key, self.algorithms)
        self._jwt = jwt
        self.key = key
        self.audience = audience
        self.issuer = issuer
        self.claim = claim
        self.stream = stream
        self.leeway = leeway

    def check(self, token: str, now: float) -> Allowed | Denied:
        jwt = self._jwt
        try:
            claims = jwt.decode(
                token, self.key, algorithms=self.algorithms, audience=self.audience, issuer=self.issuer,
                options={"require": ["exp"], "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.MissingRequiredClaimError:
            return Denied(401, "invalid-token", "the token has no expiry (exp)")
        except jwt.InvalidAudienceError:
            return Denied(401, "wrong-audience", "the token is not meant for this server (aud)")
        except jwt.InvalidIssuerError:
            return Denied(401, "wrong-issuer", "the token was not issued by a trusted issuer (iss)")
        except jwt.InvalidTokenError:
            return Denied(401, "invalid-token", "the token is not valid")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            return Denied(401, "invalid-token", "the token's expiry (exp) is not a number")
        if now >= exp + self.leeway:
            return Denied(401, "token-expired", "the token has expired")
        if isinstance(nbf, (int, float)) and now < nbf - self.leeway:
            return Denied(401, "invalid-token", "the token is not valid yet (nbf)")
        allowed = claims.get(self.claim)
        if isinstance(allowed, str):
            allowed = allowed.replace(",", " ").split()
        if not isinstance(allowed, list) or not ("*" in allowed or self.stream in allowed):
            return Denied(403, "stream-not-allowed", f"the token does not grant stream {self.stream} (claim {self.claim})")
        subject = claims.get("sub")
        return Allowed(f"jwt {subject}" if isinstance(subject, str) else "jwt", float(exp) + self.leeway)


class BearerAuth:
    def __init__(self, tokens: list[bytes], jwt: JwtVerifier | None, realm: str) -> None:
        self.tokens = tokens
        self.jwt = jwt
        self.challenge = f'Bearer realm="{realm}"'

    def check(self, credentials: Credentials, now: float) -> Allowed | Denied:
        token = credentials.bearer
        if not token:
            return Denied(401, "missing-credentials", "this stream needs a bearer token")
        digest = token_digest(token)
        # every one compared (a sum, not any(), which stops at the first match): the time does not say which matched
        if sum(hmac.compare_digest(digest, known) for known in self.tokens):
            return Allowed("static token")
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.check(token, now)
        return Denied(401, "invalid-token", "the token is not valid")


# --------------------------------------------------------------------------- from options


def build_authenticator(options: AccessOptions, stream: str, environ: Mapping[str, str] | None = None,
                        access: AccessSecrets | None = None) -> Authenticator:
    """The authenticator a connector's ``auth.*`` options describe; AuthConfigError names the bad option.
    ``access``: what they name, read already (a worker process checks what the daemon read at its start)."""
    if access is None:
        access = load_access(options, environ)
    if access.kind == "none":
        return NoAuth()
    if access.kind == "basic":
        return BasicAuth(access.users, access.realm, access.cache_ttl)
    jwt = access.jwt
    verifier = None if jwt is None else JwtVerifier(jwt.key, jwt.algorithms, jwt.audience, jwt.issuer, jwt.claim, stream, jwt.leeway)
    return BearerAuth(list(access.tokens), verifier, access.realm)
