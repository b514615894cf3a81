"""Globus Auth: the registry as a resource server (``auth.provider = "globus"``).

A bearer token is introspected (``include=identity_set``) with the registry's confidential client and accepted
only when it is active, inside its ``nbf``..``exp`` window (``auth.globus.clock_skew_s`` of tolerance) and
carries ``auth.globus.scope``. Every identity in its identity set is the same person: the first sign-in links
them all to one local user name (derived from the primary identity's username), later sign-ins with any of
them find that user. Group memberships come from the Globus Groups API with a dependent token.

globus-sdk speaks blocking ``requests``: its calls run in a thread (``asyncio.to_thread``), and answers are
cached (introspections for ``introspect_cache_ttl_s`` but never past the token's expiry, groups for
``groups_cache_ttl_s``), so a cached token costs the ``Authenticator``'s one dict lookup. Concurrent requests
with the same new token share one introspection. Local ``dlh_`` tokens keep working alongside (service
accounts, administrators' scripts).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Any

import globus_sdk

from dlhub.common.config import GlobusAuthConfig
from dlhub.common.errors import AuthUnavailable, Unauthorized
from dlhub.common.logging import get_logger
from dlhub.registry.auth import (
    GLOBUS_GROUP_URN,
    GLOBUS_IDENTITY_URN,
    GROUP_PREFIX,
    IDENTITY_PREFIX,
    PUBLIC,
    TOKEN_PREFIX,
    USER_PREFIX,
    Caller,
    LocalProvider,
    Resolved,
    token_hint,
)
from dlhub.registry.clock import now_ms
from dlhub.registry.store import MetadataStore

log = get_logger(__name__)

GROUPS_RESOURCE_SERVER = "groups.api.globus.org"
NEGATIVE_CACHE_S = 5.0
"""A rejected token is answered from memory this long, so a client retrying a bad token in a loop does not
turn into a stream of introspections."""
_UNSAFE_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]")


def user_name_for(username: str, subject: str) -> str:
    """A local user name (``NAME_RE``) for a Globus username: ``alice@uchicago.edu`` ->
    ``alice_uchicago.edu``."""
    name = _UNSAFE_NAME_RE.sub("_", username).lstrip("_.-")[:120]
    return name or f"globus-{subject}"[:120]


class TtlCache:
    """A bounded dict whose entries expire (monotonic seconds); cleared whole when full."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() >= entry[0]:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, value: Any, ttl_s: float) -> None:
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + ttl_s, value)


class GlobusProvider:
    """Globus Auth bearer tokens, with local tokens accepted alongside."""

    name = "globus"

    def __init__(
        self,
        store: MetadataStore,
        config: GlobusAuthConfig,
        *,
        local: LocalProvider,
        admin_users: Sequence[str] = (),
        auth_client: globus_sdk.ConfidentialAppAuthClient | None = None,
    ) -> None:
        if auth_client is None and not (config.client_id and config.secret()):
            raise ValueError("auth.provider = 'globus' needs auth.globus.client_id and its secret")
        if not config.scope:
            raise ValueError("auth.provider = 'globus' needs auth.globus.scope")
        self._store = store
        self._config = config
        self._local = local
        self._admins = frozenset(admin_users)
        self._client = auth_client or globus_sdk.ConfidentialAppAuthClient(
            config.client_id,
            config.secret(),
            base_url=config.auth_url,
            transport_params={"http_timeout": config.request_timeout_s, "max_retries": config.max_retries},
        )
        self._groups = TtlCache(config.cache_max_entries)
        self._rejected = TtlCache(config.cache_max_entries)
        self._inflight: dict[str, asyncio.Future[Resolved]] = {}

    async def resolve(self, token: str, token_hash: str) -> Resolved:
        if token.startswith(TOKEN_PREFIX):
            return await self._local.resolve(token, token_hash)
        rejected = self._rejected.get(token_hash)
        if rejected is not None:
            raise Unauthorized(rejected)
        pending = self._inflight.get(token_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Resolved] = asyncio.get_running_loop().create_future()
        self._inflight[token_hash] = future
        try:
            resolved = await self._resolve(token, token_hash)
        except BaseException as exc:
            if isinstance(exc, Unauthorized):
                self._rejected.put(token_hash, exc.message, NEGATIVE_CACHE_S)
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(resolved)
            return resolved
        finally:
            del self._inflight[token_hash]

    async def _resolve(self, token: str, token_hash: str) -> Resolved:
        info = await self._introspect(token, token_hash)
        expires_at_ms = self._check_token(info)
        subject = str(info.get("sub") or "")
        identity_ids = [str(i) for i in info.get("identity_set") or [subject] if i]
        user = await self._user_for(str(info.get("username") or ""), subject, identity_ids)
        groups = await self._groups_of(token, subject)
        identities = [PUBLIC, USER_PREFIX + user]
        for identity_id in identity_ids:
            identities += [IDENTITY_PREFIX + identity_id, GLOBUS_IDENTITY_URN + identity_id]
        for group_id in groups:
            identities += [GROUP_PREFIX + group_id, GLOBUS_GROUP_URN + group_id]
        caller = Caller(
            user,
            tuple(identities),
            admin=user in self._admins,
            provider=self.name,
            token_hint=token_hint(token_hash),
        )
        cache_until = time.monotonic() + self._config.introspect_cache_ttl_s
        return Resolved(caller, cache_until, expires_at_ms)

    async def _introspect(self, token: str, token_hash: str) -> dict[str, Any]:
        try:
            response = await asyncio.to_thread(
                self._client.oauth2_token_introspect, token, include="identity_set"
            )
        except globus_sdk.GlobusAPIError as exc:
            log.warning("token introspection refused", token=token_hint(token_hash), status=exc.http_status)
            raise AuthUnavailable(
                f"Globus Auth refused to introspect the token (HTTP {exc.http_status})"
            ) from None
        except globus_sdk.NetworkError as exc:
            log.warning("Globus Auth unreachable", token=token_hint(token_hash), error=type(exc).__name__)
            raise AuthUnavailable("Globus Auth is unreachable; try again shortly") from None
        data = response.data
        return data if isinstance(data, dict) else {}

    def _check_token(self, info: dict[str, Any]) -> int:
        """The token's expiry (epoch ms) when it may be used now; Unauthorized otherwise."""
        if info.get("active") is not True:
            raise Unauthorized("inactive token (revoked, expired or unknown to Globus Auth)")
        now_s = now_ms() / 1000
        skew = self._config.clock_skew_s
        exp, nbf = info.get("exp"), info.get("nbf")
        if not isinstance(exp, int | float) or now_s >= exp + skew:
            raise Unauthorized("expired token")
        if isinstance(nbf, int | float) and now_s < nbf - skew:
            raise Unauthorized("token not yet valid")
        scopes = str(info.get("scope") or "").split()
        if self._config.scope not in scopes:
            raise Unauthorized(f"the token does not carry this registry's scope ({self._config.scope})")
        return int(exp * 1000)

    async def _user_for(self, username: str, subject: str, identity_ids: list[str]) -> str:
        """The local user these linked identities are; the first sign-in picks a free name and links them."""
        user = await self._store.user_for_identities(identity_ids)
        if user is None:
            base = user_name_for(username, subject)
            user, suffix = base, 1
            while await self._store.user_has_identities(user):
                suffix += 1
                user = f"{base[:115]}-{suffix}"
            log.info("first Globus sign-in linked", user=user, identities=len(identity_ids))
        # Identities linked to the account since the last sign-in join the same user.
        await self._store.link_identities(user, identity_ids)
        return user

    async def _groups_of(self, token: str, subject: str) -> list[str]:
        cached = self._groups.get(subject)
        if cached is not None:
            return list(cached)
        try:
            groups = await asyncio.to_thread(self._fetch_groups, token)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as exc:
            # Fail closed: without memberships the caller sees less, never more. Not cached.
            log.warning("Globus Groups unavailable; no group memberships this time", error=type(exc).__name__)
            return []
        self._groups.put(subject, tuple(groups), self._config.groups_cache_ttl_s)
        return groups

    def _fetch_groups(self, token: str) -> list[str]:
        dependent = self._client.oauth2_get_dependent_tokens(token, scope=self._config.groups_scope)
        tokens = dependent.by_resource_server.get(GROUPS_RESOURCE_SERVER)
        if not tokens:
            return []
        groups = globus_sdk.GroupsClient(
            base_url=self._config.groups_url,
            authorizer=globus_sdk.AccessTokenAuthorizer(tokens["access_token"]),
            transport_params={
                "http_timeout": self._config.request_timeout_s,
                "max_retries": self._config.max_retries,
            },
        )
        return sorted(str(group["id"]) for group in groups.get_my_groups())
