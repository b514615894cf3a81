"""Bearer-token authentication with local API tokens.

A token is ``dlh_`` + 43 URL-safe random characters. Only its sha256 hex digest is stored, and logs only ever
carry the digest's first 8 characters. Resolved tokens are cached in memory for a short time so the hot path
costs one hash and one dict lookup; tokens revoked from another process (the CLI) stop working within
``cache_ttl_s``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Final

from dlhub.common.config import DLHubSettings
from dlhub.common.errors import Unauthorized, ValidationFailed
from dlhub.common.ids import NAME_RE
from dlhub.registry.store import MetadataStore, TokenRecord

TOKEN_PREFIX: Final = "dlh_"
PUBLIC: Final = "public"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: ``user`` is None for anonymous callers."""

    user: str | None
    identities: tuple[str, ...]

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    def can_see(self, owner: str, visible_to: tuple[str, ...]) -> bool:
        """The owner always sees its servables; others need one identity in ``visible_to``."""
        if self.user is not None and self.user == owner:
            return True
        return any(identity in visible_to for identity in self.identities)


ANONYMOUS: Final = Caller(None, (PUBLIC,))


def caller_for(user: str) -> Caller:
    return Caller(user, (PUBLIC, f"user:{user}"))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def create_token(
    store: MetadataStore, user: str, *, label: str = "", expires_in_s: float | None = None
) -> str:
    """Create an API token for ``user`` in ``store`` and return the secret (shown once, never stored)."""
    if not NAME_RE.fullmatch(user):
        raise ValidationFailed(f"invalid user name {user!r}", field="user")
    token = generate_token()
    now = _now_ms()
    await store.add_token(
        TokenRecord(
            token_hash=hash_token(token),
            user=user,
            label=label,
            created_at_ms=now,
            expires_at_ms=now + int(expires_in_s * 1000) if expires_in_s is not None else None,
        )
    )
    return token


async def revoke_token(store: MetadataStore, token: str) -> bool:
    """Revoke a token given its secret; return whether it existed."""
    return await store.revoke_token(hash_token(token))


def _unexpired(record: TokenRecord) -> bool:
    return record.expires_at_ms is None or _now_ms() < record.expires_at_ms


async def create_or_reuse_token(
    settings: DLHubSettings,
    user: str,
    *,
    reuse: str | None = None,
    label: str = "",
    expires_in_s: float | None = None,
) -> str:
    """Open the configured store and return ``reuse`` if it is a live token of ``user``, else a new token.

    ``python -m dlhub.registry token create`` runs this; the CLI (``dlhub token create``, ``dlhub up``) calls
    that entry point rather than importing the registry, so the SDK installs without the server."""
    from dlhub.registry.store.factory import make_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = make_store(settings)
    await store.open()
    try:
        if reuse:
            record = await store.get_token(hash_token(reuse))
            if record is not None and record.user == user and not record.revoked and _unexpired(record):
                return reuse
        return await create_token(store, user, label=label, expires_in_s=expires_in_s)
    finally:
        await store.close()


class Authenticator:
    """Resolve ``Authorization`` headers to callers, caching resolved tokens briefly."""

    def __init__(self, store: MetadataStore, *, cache_ttl_s: float = 30.0, max_cached: int = 10_000) -> None:
        self._store = store
        self._cache_ttl_s = cache_ttl_s
        self._max_cached = max_cached
        # token hash -> (caller, monotonic time the entry expires, token expiry in epoch ms or None)
        self._cache: dict[str, tuple[Caller, float, int | None]] = {}

    async def authenticate(self, authorization: str | None) -> Caller:
        """Return the caller for a header value; anonymous without one; 401 for a bad one."""
        if not authorization:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        token_hash = hash_token(token)
        entry = self._cache.get(token_hash)
        if entry is not None:
            caller, cache_until, expires_at_ms = entry
            if time.monotonic() < cache_until and (expires_at_ms is None or _now_ms() < expires_at_ms):
                return caller
            del self._cache[token_hash]
        record = await self._store.get_token(token_hash)
        if record is None or record.revoked:
            raise Unauthorized("invalid or revoked token")
        if record.expires_at_ms is not None and _now_ms() >= record.expires_at_ms:
            raise Unauthorized("expired token")
        caller = caller_for(record.user)
        if len(self._cache) >= self._max_cached:
            self._cache.clear()
        self._cache[token_hash] = (caller, time.monotonic() + self._cache_ttl_s, record.expires_at_ms)
        return caller

    def forget(self, token_hash: str) -> None:
        """Drop a cached token (after a local revocation)."""
        self._cache.pop(token_hash, None)

    def require_user(self, caller: Caller) -> str:
        if caller.user is None:
            raise Unauthorized("this operation needs a token (Authorization: Bearer <token>)")
        return caller.user
