"""Bearer-token authentication, pluggable: local API tokens (the default) or Globus Auth (``auth_globus``).

A local token is ``dlh_`` + 43 URL-safe random characters. Only its sha256 hex digest is stored, and logs
and the audit log only ever carry the last 6 hex digits of that digest (``token_hint``). Resolved tokens are
cached in memory for a short time so the hot path costs one hash and one dict lookup; tokens revoked from
another process (the CLI) and group changes take effect within ``auth.token_cache_ttl_s``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from dlhub.common.config import DLHubSettings
from dlhub.common.errors import Unauthorized, ValidationFailed
from dlhub.common.ids import NAME_RE
from dlhub.registry.store import AuditRecord, MetadataStore, TokenRecord

TOKEN_PREFIX: Final = "dlh_"
PUBLIC: Final = "public"
CLI_ACTOR: Final = "-"
"""The audit log's actor for changes made on the store directly (``python -m dlhub.registry``)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: ``user`` is None for anonymous callers.

    ``identities`` are the principals the caller holds, matched against a servable's ``visible_to`` and
    ``maintainers``: ``public``, ``user:<name>``, ``group:<id>`` for each group, and for Globus sign-ins
    ``identity:<uuid>`` (with its ``urn:globus:auth:identity:<uuid>`` alias) for every linked identity.
    """

    user: str | None
    identities: tuple[str, ...]
    admin: bool = False
    provider: str = "local"
    token_hint: str = ""
    """The last characters of the token's hash: enough to tell tokens apart in logs, useless to attackers."""

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(i.removeprefix(GROUP_PREFIX) for i in self.identities if i.startswith(GROUP_PREFIX))

    def can_see(self, owner: str, visible_to: tuple[str, ...]) -> bool:
        """The owner always sees its servables; others need one identity in ``visible_to``."""
        if self.user is not None and self.user == owner:
            return True
        return any(identity in visible_to for identity in self.identities)

    def can_manage(self, owner: str, maintainers: tuple[str, ...]) -> bool:
        """The owner, or a principal the owner named a maintainer (never anonymous, never "public")."""
        if self.user is None:
            return False
        if self.user == owner:
            return True
        return any(identity in maintainers for identity in self.identities if identity != PUBLIC)


USER_PREFIX: Final = "user:"
GROUP_PREFIX: Final = "group:"
IDENTITY_PREFIX: Final = "identity:"
GLOBUS_IDENTITY_URN: Final = "urn:globus:auth:identity:"
GLOBUS_GROUP_URN: Final = "urn:globus:groups:id:"
_NAME_PATTERN: Final = "[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"  # ids.NAME_RE
PRINCIPAL_PATTERN: Final = (
    f"^(public|(user|group|identity):{_NAME_PATTERN}|"
    f"({GLOBUS_GROUP_URN}|{GLOBUS_IDENTITY_URN}){_NAME_PATTERN})$"
)
"""What ``normalise_principal`` accepts (without surrounding spaces), for the OpenAPI document."""
ANONYMOUS: Final = Caller(None, (PUBLIC,))


def caller_for(user: str, groups: Sequence[str] = (), *, admin: bool = False, token_hint: str = "") -> Caller:
    identities = (PUBLIC, f"{USER_PREFIX}{user}", *(f"{GROUP_PREFIX}{g}" for g in groups))
    return Caller(user, identities, admin=admin, token_hint=token_hint)


def normalise_principal(value: str) -> str:
    """A principal in its short form (``group:<id>``, ``identity:<uuid>``); Globus URNs are accepted too.

    Raises ValidationFailed for anything that is not ``public`` or a ``user:``/``group:``/``identity:``
    principal with a non-empty name.
    """
    value = value.strip()
    if value.startswith(GLOBUS_GROUP_URN):
        value = GROUP_PREFIX + value.removeprefix(GLOBUS_GROUP_URN)
    elif value.startswith(GLOBUS_IDENTITY_URN):
        value = IDENTITY_PREFIX + value.removeprefix(GLOBUS_IDENTITY_URN)
    if value == PUBLIC:
        return value
    prefix, sep, name = value.partition(":")
    if (
        not sep
        or f"{prefix}:" not in (USER_PREFIX, GROUP_PREFIX, IDENTITY_PREFIX)
        or not NAME_RE.fullmatch(name)
    ):
        raise ValidationFailed(
            f"{value!r} is not a principal: expected 'public', 'user:<name>', 'group:<id>' or "
            "'identity:<uuid>'"
        )
    return value


def token_hint(token_hash: str) -> str:
    """What logs and the audit log may show of a token: the last 6 hex digits of its hash."""
    return "…" + token_hash[-6:]


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
    token_hash = hash_token(token)
    now = _now_ms()
    await store.add_token(
        TokenRecord(
            token_hash=token_hash,
            user=user,
            label=label,
            created_at_ms=now,
            expires_at_ms=now + int(expires_in_s * 1000) if expires_in_s is not None else None,
        )
    )
    detail = {"token": token_hint(token_hash), "label": label, "expires_in_s": expires_in_s}
    await store.add_audit(
        AuditRecord(at_ms=now, actor=CLI_ACTOR, action="token.create", target=f"user:{user}", detail=detail)
    )
    return token


async def revoke_token(store: MetadataStore, token: str, *, actor: str = "-") -> bool:
    """Revoke a token given its secret; return whether it existed."""
    token_hash = hash_token(token)
    record = await store.get_token(token_hash)
    revoked = await store.revoke_token(token_hash)
    if revoked and record is not None:
        await store.add_audit(
            AuditRecord(
                at_ms=_now_ms(),
                actor=actor,
                action="token.revoke",
                target=f"user:{record.user}",
                detail={"token": token_hint(token_hash)},
            )
        )
    return revoked


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


@dataclass(frozen=True, slots=True)
class Resolved:
    """A token resolved by a provider: the caller, until when (monotonic) to trust it without asking again,
    and the token's own expiry (epoch ms; None when it has none)."""

    caller: Caller
    cache_until_s: float
    expires_at_ms: int | None


class IdentityProvider(Protocol):
    """Turns a bearer token into a caller, or raises Unauthorized."""

    name: str

    async def resolve(self, token: str, token_hash: str) -> Resolved: ...


class LocalProvider:
    """Local API tokens (hashed in the store) and local groups, both managed by the CLI."""

    name = "local"

    def __init__(self, store: MetadataStore, *, cache_ttl_s: float, admin_users: Sequence[str] = ()) -> None:
        self._store = store
        self._cache_ttl_s = cache_ttl_s
        self._admins = frozenset(admin_users)

    async def resolve(self, token: str, token_hash: str) -> Resolved:
        record = await self._store.get_token(token_hash)
        if record is None or record.revoked:
            raise Unauthorized("invalid or revoked token")
        if record.expires_at_ms is not None and _now_ms() >= record.expires_at_ms:
            raise Unauthorized("expired token")
        groups = await self._store.groups_of(record.user)
        caller = caller_for(
            record.user, groups, admin=record.user in self._admins, token_hint=token_hint(token_hash)
        )
        return Resolved(caller, time.monotonic() + self._cache_ttl_s, record.expires_at_ms)


class Authenticator:
    """Resolve ``Authorization`` headers to callers through a provider, caching resolved tokens briefly.

    A cached token costs one hash and one dict lookup; the cache is bounded (cleared whole when full, which
    only costs a provider round trip per live token).
    """

    def __init__(
        self,
        store: MetadataStore | None = None,
        *,
        provider: IdentityProvider | None = None,
        cache_ttl_s: float = 30.0,
        max_cached: int = 10_000,
    ) -> None:
        if provider is None:
            if store is None:
                raise ValueError("an Authenticator needs a store or a provider")
            provider = LocalProvider(store, cache_ttl_s=cache_ttl_s)
        self.provider = provider
        self._max_cached = max_cached
        # token hash -> resolved caller (with its cache deadline and the token's expiry)
        self._cache: dict[str, Resolved] = {}

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
            if time.monotonic() < entry.cache_until_s and (
                entry.expires_at_ms is None or _now_ms() < entry.expires_at_ms
            ):
                return entry.caller
            del self._cache[token_hash]
        resolved = await self.provider.resolve(token, token_hash)
        if len(self._cache) >= self._max_cached:
            self._cache.clear()
        self._cache[token_hash] = resolved
        return resolved.caller

    def forget(self, token_hash: str) -> None:
        """Drop a cached token (after a local revocation)."""
        self._cache.pop(token_hash, None)

    def require_user(self, caller: Caller) -> str:
        if caller.user is None:
            raise Unauthorized("this operation needs a token (Authorization: Bearer <token>)")
        return caller.user
