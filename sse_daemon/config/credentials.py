"""The secrets that access options name, read and checked. Pure: files in, data out.

Validation reads them so that ``--check`` reports an unreadable users file, a
plain-text password, a short token or a JWT key that does not suit its
algorithms; edge/auth.py builds the authenticators from what
:func:`load_access` returns. Each problem is an :class:`AuthConfigError`
naming the option, so the configuration error points at it.

Nothing here keeps a secret in clear longer than needed: static tokens are
held as SHA-256 digests, and no repr shows a password hash, token or key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from sse_daemon.config.options import AccessOptions

__all__ = [
    "AuthConfigError", "AccessSecrets", "JwtSettings", "BCRYPT_PREFIXES", "ARGON2_PREFIXES",
    "load_access", "load_users", "load_tokens", "token_digest", "check_jwt_key",
]

BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
ARGON2_PREFIXES = ("$argon2i$", "$argon2d$", "$argon2id$")


class AuthConfigError(ValueError):
    """A problem with an auth option; ``option`` names it for the config error."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class JwtSettings:
    """How JWTs are verified: a key that suits every algorithm listed, and what a token must name."""

    key: str = field(repr=False)
    algorithms: tuple[str, ...]
    audience: str
    issuer: str | None
    claim: str
    leeway: float


@dataclass(frozen=True)
class AccessSecrets:
    """What ``auth.*`` options name, loaded: the users of ``basic``, the tokens and JWT settings of ``bearer``."""

    kind: str  # none, basic or bearer
    realm: str
    users: Mapping[str, str] = field(default_factory=dict, repr=False)  # name -> bcrypt or Argon2 hash
    cache_ttl: float = 0.0
    tokens: tuple[bytes, ...] = field(default=(), repr=False)  # SHA-256 digests of the static tokens
    jwt: JwtSettings | None = None


def load_users(path: str) -> dict[str, str]:
    """``name:hash`` lines (``#`` comments, blank lines ignored); only bcrypt and Argon2 hashes."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AuthConfigError("auth.users.file", f"cannot read the users file {path}: {getattr(e, 'strerror', None) or e}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, colon, hashed = text.partition(":")
        if not colon or not name:
            raise AuthConfigError("auth.users.file", f"{path}:{number}: expected 'name:hash'")
        if not hashed.startswith(BCRYPT_PREFIXES + ARGON2_PREFIXES):
            raise AuthConfigError(
                "auth.users.file",
                f"{path}:{number}: the password of '{name}' is not a bcrypt ($2b$...) or Argon2 ($argon2id$...) hash; "
                "plain-text passwords are refused (make one with: python -c \"import bcrypt; print(bcrypt.hashpw(b'secret', bcrypt.gensalt()).decode())\")",
            )
        if name in users:
            raise AuthConfigError("auth.users.file", f"{path}:{number}: user '{name}' is listed twice")
        users[name] = hashed
    if not users:
        raise AuthConfigError("auth.users.file", f"{path} lists no users")
    return users


def token_digest(token: str) -> bytes:
    """How a static token is held and compared: its SHA-256 digest."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def load_tokens(path: str | None, env_name: str | None, environ: Mapping[str, str]) -> list[bytes]:
    """Static tokens, as digests: one per line of the file, and/or comma-separated in the variable."""
    tokens: list[str] = []
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                tokens += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        except (OSError, UnicodeDecodeError) as e:
            raise AuthConfigError("auth.tokens.file", f"cannot read the tokens file {path}: {getattr(e, 'strerror', None) or e}") from None
    if env_name:
        if env_name not in environ:
            raise AuthConfigError("auth.tokens.env", f"the environment variable {env_name} is not set")
        tokens += [t.strip() for t in environ[env_name].split(",") if t.strip()]
    short = [t for t in tokens if len(t) < 16]
    if short:
        option = "auth.tokens.file" if path else "auth.tokens.env"
        raise AuthConfigError(option, f"{len(short)} token(s) shorter than 16 characters; use long random tokens")
    return [token_digest(t) for t in tokens]


def check_jwt_key(key: str, algorithms: Iterable[str]) -> None:
    """Every algorithm known and safe, and the key suits each (PyJWT loads lazily)."""
    from jwt.algorithms import get_default_algorithms

    known = get_default_algorithms()
    for name in algorithms:
        if name not in known or name == "none":
            raise AuthConfigError("auth.jwt.algorithms", f"unknown or unsafe algorithm {name!r}; expected some of {', '.join(sorted(a for a in known if a != 'none'))}")
        if name.startswith("HS") and len(key.strip().encode("utf-8")) < 32:
            raise AuthConfigError("auth.jwt.key", f"an {name} secret must be at least 32 bytes long")
        try:
            known[name].prepare_key(key)
        except Exception as e:  # InvalidKeyError, ValueError from cryptography, ...
            raise AuthConfigError("auth.jwt.key", f"the key does not suit {name}: {type(e).__name__}") from None


def _read_key(options: AccessOptions) -> str | None:
    key, path = options.auth_jwt_key, options.auth_jwt_key_file
    if key and path:
        raise AuthConfigError("auth.jwt.key.file", "give auth.jwt.key or auth.jwt.key.file, not both")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()  # an HMAC secret written with a trailing newline must still match
        except (OSError, UnicodeDecodeError) as e:
            raise AuthConfigError("auth.jwt.key.file", f"cannot read the key file {path}: {getattr(e, 'strerror', None) or e}") from None
    return key or None


def load_access(options: AccessOptions, environ: Mapping[str, str] | None = None) -> AccessSecrets:
    """Read and check what ``auth.*`` names; AuthConfigError names the first bad option."""
    environ = os.environ if environ is None else environ
    kind, realm = options.auth_type, options.auth_realm
    if kind == "none":
        return AccessSecrets(kind, realm)
    if kind == "basic":
        if not options.auth_users_file:
            raise AuthConfigError("auth.users.file", "auth.type basic needs auth.users.file (name:hash lines)")
        return AccessSecrets(kind, realm, users=load_users(options.auth_users_file), cache_ttl=options.auth_cache_ttl)
    tokens = load_tokens(options.auth_tokens_file, options.auth_tokens_env, environ)
    key = _read_key(options)
    jwt = None
    if key is not None:
        if not options.auth_jwt_audience:
            raise AuthConfigError("auth.jwt.audience", "JWTs are accepted only for a named audience: set auth.jwt.audience")
        algorithms = tuple(options.auth_jwt_algorithms or ("RS256",))
        check_jwt_key(key, algorithms)
        jwt = JwtSettings(key, algorithms, options.auth_jwt_audience, options.auth_jwt_issuer or None,
                          options.auth_jwt_claim, options.auth_jwt_leeway)
    if not tokens and jwt is None:
        raise AuthConfigError("auth.type", "auth.type bearer needs auth.tokens.file, auth.tokens.env, auth.jwt.key or auth.jwt.key.file")
    return AccessSecrets(kind, realm, tokens=tuple(tokens), jwt=jwt)
