"""CurveZMQ keys of the bus: who may connect to the broker, and in which role.

Every peer of the broker holds a keypair; the broker holds its own and the public keys of every peer it
admits. Key files live in one directory (``bus.curve_keys_dir``) in ZeroMQ's certificate format:
``<name>.key`` (the public key) and ``<name>.key_secret`` (the public and the secret key, mode 0600). A key's
name says its role: ``broker``, or ``<role>`` / ``<role>-<label>`` with role ``registry``, ``worker``,
``builder``, ``search`` or ``admin`` (``worker-gpu01``: one more worker key, revocable on its own).

The broker admits a connection only when its client key is one of the ``<name>.key`` files next to its own
``broker.key_secret`` (a ZAP handler, ``ZapHandler``), and labels the connection with the key's name; what a
peer may send then depends on the role of that name (``PeerRights``, enforced by the broker per message).

A peer's routing identity on the broker's ROUTER socket carries a tag only its secret key can produce
(``tagged_identity``): another key, whatever its role, cannot claim the identity of the registry (and receive
its results) by connecting with the same identity.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq
import zmq.auth
from zmq.utils import z85

from dlhub.common.config import BusConfig
from dlhub.common.ids import BUILDER_TOPIC, SEARCH_INDEX_TOPIC, SERVABLE_PREFIX
from dlhub.common.logging import get_logger
from dlhub.common.messages import (
    Ack,
    Draining,
    Heartbeat,
    Message,
    Progress,
    Register,
    Result,
    StatsRequest,
    Submit,
    TaskQuery,
    Unregister,
)

log = get_logger(__name__)

BROKER_KEY: Final = "broker"
ROLES: Final = ("registry", "worker", "builder", "search", "admin")
"""Client roles, each a key name of its own in the keys that ``create_keys`` writes."""
KEY_NAME_RE: Final = re.compile(r"\A(registry|worker|builder|search|admin)(?:-[A-Za-z0-9_.]{1,64})?\Z")
ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
ZAP_DOMAIN: Final = "dlhub"
IDENTITY_TAG_SEP: Final = "~"


class CurveKeyError(Exception):
    """A key file is missing or unreadable: the service cannot join the bus."""


def role_of(name: str) -> str | None:
    """The role a key name gives (``worker-gpu01`` -> ``worker``), or None for a name no role matches."""
    match = KEY_NAME_RE.match(name)
    return match.group(1) if match else None


# -- key files -----------------------------------------------------------------------------------------------


def _write_key_files(keys_dir: Path, name: str) -> None:
    public, secret = zmq.curve_keypair()
    header = "#   ZeroMQ CURVE certificate, written by DLHub\n#   Keep the .key_secret file private.\n"
    public_text = f'{header}metadata\ncurve\n    public-key = "{public.decode()}"\n'
    secret_text = public_text + f'    secret-key = "{secret.decode()}"\n'
    # The secret file is created 0600 before a byte is written (never readable by others, whatever the umask).
    secret_path = keys_dir / f"{name}.key_secret"
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret_text)
    os.chmod(secret_path, 0o600)
    (keys_dir / f"{name}.key").write_text(public_text, encoding="utf-8")


def create_keys(
    keys_dir: Path, names: Iterable[str] = (BROKER_KEY, *ROLES), *, overwrite: bool = False
) -> list[str]:
    """Write a keypair for each of ``names`` that does not have one yet (all of them with ``overwrite``);
    the names written. The directory is created private (0700)."""
    names = list(names)
    for name in names:
        if name != BROKER_KEY and role_of(name) is None:
            raise ValueError(
                f"key name {name!r} is not broker, <role> or <role>-<label> (roles: {', '.join(ROLES)})"
            )
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for name in names:
        if overwrite or not (keys_dir / f"{name}.key_secret").is_file():
            _write_key_files(keys_dir, name)
            written.append(name)
    return written


def load_keypair(keys_dir: Path, name: str) -> tuple[bytes, bytes]:
    """(public, secret) of ``<keys_dir>/<name>.key_secret`` (z85 bytes)."""
    path = keys_dir / f"{name}.key_secret"
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read the bus key {path}: {exc}") from None
    if secret is None:
        raise CurveKeyError(f"{path} holds no secret key")
    mode = path.stat().st_mode
    if mode & 0o077:
        log.warning("bus secret key file is readable by others", path=str(path), mode=oct(mode & 0o777))
    return public, secret


def load_public_key(keys_dir: Path, name: str) -> bytes:
    path = keys_dir / f"{name}.key"
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read the bus key {path}: {exc}") from None
    return public


def authorized_keys(keys_dir: Path) -> dict[bytes, str]:
    """Public key (z85) -> key name, for every ``<role>[-<label>].key`` in ``keys_dir``."""
    keys: dict[bytes, str] = {}
    for path in sorted(keys_dir.glob("*.key")):
        name = path.name[: -len(".key")]
        if name == BROKER_KEY:
            continue
        if role_of(name) is None:
            log.warning("ignoring a bus key whose name gives no role", file=path.name)
            continue
        keys[load_public_key(keys_dir, name)] = name
    return keys


@dataclass(frozen=True)
class ClientKeys:
    """What a peer of the broker sets on its socket; ``name`` is the key's name, for logs."""

    name: str
    public: bytes
    secret: bytes
    server_public: bytes

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE client of the broker (before it connects)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def __repr__(self) -> str:  # never the secret key, in a log or a traceback
        return f"ClientKeys(name={self.name!r})"


def load_client_keys(keys_dir: Path, name: str) -> ClientKeys:
    public, secret = load_keypair(keys_dir, name)
    return ClientKeys(
        name=name, public=public, secret=secret, server_public=load_public_key(keys_dir, BROKER_KEY)
    )


def client_keys_for(bus: BusConfig, default_name: str) -> ClientKeys | None:
    """The keys a peer of the broker uses: None on a bus without CURVE; else the keypair named
    ``bus.curve_key_name`` (default ``default_name``, the service's role). CurveKeyError when missing."""
    if not bus.curve_enabled:
        return None
    if bus.curve_keys_dir is None:
        raise CurveKeyError("bus.curve_enabled is set but bus.curve_keys_dir is not")
    return load_client_keys(bus.curve_keys_dir, bus.curve_key_name or default_name)


def tagged_identity(identity: str, keys: ClientKeys | None) -> bytes:
    """The routing identity a peer uses on the broker: ``identity`` plus, on a CURVE bus, a tag derived from
    the peer's secret key (the same on every reconnect and restart, so that the broker's durable results still
    reach a restarted registry; unguessable to anyone without that key)."""
    if keys is None:
        return identity.encode()
    digest = hashlib.blake2b(identity.encode(), key=keys.secret, digest_size=16, person=b"dlhub-identity")
    return f"{identity}{IDENTITY_TAG_SEP}{digest.hexdigest()}".encode()


def untagged(identity: str) -> str:
    """An identity without its tag (what logs show: the tag is a credential of sorts)."""
    return identity.partition(IDENTITY_TAG_SEP)[0]


# -- what each role may do -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRights:
    """What the holder of one key may send to the broker: ``messages``, the message types; ``topic_prefixes``,
    what a handler role may register for."""

    name: str
    role: str
    messages: frozenset[type[Message]]
    topic_prefixes: tuple[str, ...] = ()

    def may_register(self, topics: Iterable[str]) -> bool:
        return all(topic.startswith(self.topic_prefixes) for topic in topics)


# Every role may ask for the handler table (readiness probes run with the container's own key); it names
# kinds, topics and capacities, nothing a handler does not already see.
_HANDLER_MESSAGES: Final[frozenset[type[Message]]] = frozenset(
    {Register, Unregister, Draining, Result, Progress, Heartbeat, StatsRequest}
)
_ROLE_MESSAGES: Final[Mapping[str, frozenset[type[Message]]]] = {
    # The registry submits and follows tasks; it never serves a topic.
    "registry": frozenset({Submit, Ack, TaskQuery, StatsRequest, Heartbeat}),
    # Tools that look at the broker (tests, operators): the handler table, nothing else.
    "admin": frozenset({StatsRequest, Heartbeat}),
    # Handlers serve the topics of their role and answer what they were sent; they submit nothing.
    "worker": _HANDLER_MESSAGES,
    "builder": _HANDLER_MESSAGES,
    "search": _HANDLER_MESSAGES,
}
_ROLE_TOPICS: Final[Mapping[str, tuple[str, ...]]] = {
    "worker": (SERVABLE_PREFIX,),
    "builder": (BUILDER_TOPIC.partition("/")[0] + "/",),
    "search": (SEARCH_INDEX_TOPIC.partition("/")[0] + "/",),
}


def rights_of(name: str) -> PeerRights:
    role = role_of(name)
    if role is None:
        raise ValueError(f"key name {name!r} gives no role")
    return PeerRights(
        name=name, role=role, messages=_ROLE_MESSAGES[role], topic_prefixes=_ROLE_TOPICS.get(role, ())
    )


# -- the broker's ZAP handler --------------------------------------------------------------------------------


class ZapHandler:
    """Answers ZeroMQ's authentication requests (ZAP, RFC 27) for the broker's context in a thread of its own:
    a CURVE client key in ``keys`` is admitted with its name as the connection's User-Id; any other is refused
    (the connection never reaches the broker's socket). Bind it before the broker's socket binds."""

    _LOGGED_MAX: Final = 10_000

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], keys: Mapping[bytes, str]) -> None:
        self._keys = dict(keys)
        self._socket: zmq.Socket[bytes] = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(ZAP_ENDPOINT)
        self._stop = threading.Event()
        self._refused: set[tuple[str, bytes]] = set()
        self._thread = threading.Thread(target=self._serve, name="zap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _serve(self) -> None:
        sock = self._socket
        try:
            while not self._stop.is_set():
                if sock.poll(100):
                    sock.send_multipart(self._answer(sock.recv_multipart()))
        finally:
            sock.close(linger=0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [b"1.0", request[1] if len(request) > 1 else b"", b"400", b"malformed request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        if mechanism == b"CURVE" and len(credentials) == 1:
            name = self._keys.get(z85.encode(credentials[0]))
            if name is not None:
                return [version, request_id, b"200", b"OK", name.encode(), b""]
            self._log_refusal(address.decode(errors="replace"), z85.encode(credentials[0]))
        else:
            self._log_refusal(address.decode(errors="replace"), mechanism)
        return [version, request_id, b"400", b"not authorized", b"", b""]

    def _log_refusal(self, address: str, key: bytes) -> None:
        # Once per address and key: a refused peer retries every 100 ms. Public keys are no secret; naming the
        # refused one lets an operator admit it.
        if (address, key) in self._refused:
            return
        if len(self._refused) >= self._LOGGED_MAX:
            self._refused.clear()
        self._refused.add((address, key))
        log.warning("bus connection refused: unknown key", address=address, key=key.decode(errors="replace"))
