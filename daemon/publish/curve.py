"""CURVE authentication and encryption for detectd's ZeroMQ sockets (``zmq.auth``).

On loopback the PUB socket needs no protection; once the endpoint leaves the host, anyone who can
reach the port would read every detection. With CURVE the daemon (server) holds a key pair, each
subscriber (client) holds its own, and the daemon accepts only clients whose public key is in a
directory of authorized keys. An unlisted client completes no handshake and receives nothing.

Key files are the ZeroMQ certificate files that ``detectd keygen`` (``zmq.auth.create_certificates``)
writes: ``NAME.key`` holds the public key only, ``NAME.key_secret`` holds both. Paths go through
``os.path.expandvars`` so a config may say ``$CREDENTIALS_DIRECTORY/server.key_secret`` (systemd's
``LoadCredential=``, the way to hand a secret to a ``DynamicUser`` service).

The ZAP handler (a :class:`zmq.auth.thread.ThreadAuthenticator`) is per context and runs a thread;
:func:`configure_server` returns it wrapped in :class:`CurveServer`, whose ``reload()`` re-reads the
authorized keys directory and ``stop()`` ends the thread. The authorized keys are read once when
the socket is set up; they are re-read on SIGHUP only if the daemon's reload calls
``CurveServer.reload()`` (``Daemon.reload`` -> ``self.publisher.authenticator.reload()``; until that
is wired in ``daemon/app.py``, adding or removing a key takes a restart).

:func:`check_files` is what ``detectd check-config`` runs: the same files the daemon will open,
checked before it starts, one ``publish.curve.<key>: problem`` line each.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.auth.thread import ThreadAuthenticator

from daemon.errors import DetectdError

__all__ = [
    "CurveError",
    "CurveServer",
    "ClientKeys",
    "check_files",
    "configure_server",
    "configure_client",
    "generate_keypair",
    "load_public_key",
    "load_secret_key",
]

log = logging.getLogger(__name__)


class CurveError(DetectdError, ValueError):
    """A key file is missing or malformed, or CURVE is unavailable; the message names the file."""


def _path(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.expandvars(os.fspath(path))).expanduser()


def _unexpanded(p: Path) -> str | None:
    """The first ``$VAR`` left in a path after ``expandvars`` (the variable is not set)."""
    text = os.fspath(p)
    i = text.find("$")
    if i < 0:
        return None
    name = text[i:].split("/", 1)[0]
    return name


def _require_expanded(p: Path) -> None:
    var = _unexpanded(p)
    if var is not None:
        raise CurveError(
            f"{p}: {var} is not set (systemd sets $CREDENTIALS_DIRECTORY for a unit with LoadCredential=; "
            "elsewhere set the variable or give the file's path)")


def _valid_z85_key(key: bytes) -> bool:
    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise CurveError("this libzmq was built without CURVE support")


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The Z85 public key in a certificate file (``.key`` or ``.key_secret``)."""
    p = _path(path)
    _require_expanded(p)
    try:
        public, _ = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise CurveError(f"{p}: cannot read a CURVE public key: {exc}") from exc
    if not public:
        raise CurveError(f"{p}: no public-key in this certificate file")
    if not _valid_z85_key(public):
        raise CurveError(f"{p}: public-key is not a 40-character Z85 CURVE key")
    return public


def load_secret_key(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a ``.key_secret`` certificate file."""
    p = _path(path)
    _require_expanded(p)
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise CurveError(f"{p}: cannot read a CURVE key pair: {exc}") from exc
    if not public or not secret:
        sibling = p.with_name(p.name + "_secret") if p.suffix == ".key" else None
        hint = f"; its pair is {sibling}" if sibling is not None and sibling.is_file() else ""
        raise CurveError(f"{p}: holds no secret key (a public key file?): give the NAME.key_secret "
                         f"file that `detectd keygen` writes{hint}")
    if not (_valid_z85_key(public) and _valid_z85_key(secret)):
        raise CurveError(f"{p}: public-key/secret-key are not 40-character Z85 CURVE keys")
    try:
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO) & ~stat.S_IRGRP:
            log.warning("CURVE secret key %s is readable by other users (mode %o)", p, stat.S_IMODE(mode))
    except OSError:
        pass
    return public, secret


# A refused client retries every ZMQ_RECONNECT_IVL (100 ms by default): say it once, then at
# most once per this many seconds per client key, with the count in between.
REFUSAL_LOG_INTERVAL = 60.0


class _RefusalLoggingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, plus a WARNING for every refused client (pyzmq says it at DEBUG only):
    the peer's address, the mechanism, the client's *public* key (Z85; a CURVE client sends
    nothing else, so no secret can reach the log) and the reason. Rate-limited per key."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request: tuple[str, str, str] | None = None  # (address, mechanism, client key)
        self._refused: dict[tuple[str, str], tuple[float, int]] = {}  # -> (last logged, since)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 6:
            address, mechanism, creds = msg[3], msg[5], msg[6:]
            key = "-"
            if mechanism == b"CURVE" and creds and len(creds[0]) == 32:
                key = z85.encode(creds[0]).decode()
            self._request = (address.decode("utf-8", "replace"), mechanism.decode("ascii", "replace"), key)
        try:
            await super().handle_zap_message(msg)
        finally:
            self._request = None

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            self._log_refusal(status_text.decode("utf-8", "replace"))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    def _log_refusal(self, reason: str) -> None:
        address, mechanism, key = self._request or ("?", "?", "-")
        now = time.monotonic()
        last, since = self._refused.get((address, key), (-1e18, 0))
        if now - last < REFUSAL_LOG_INTERVAL:
            self._refused[(address, key)] = (last, since + 1)
            return
        self._refused[(address, key)] = (now, 0)
        more = f" ({since} more refusals since the last report)" if since else ""
        if reason == "Unknown key":  # pyzmq's words for "not in the directory"
            reason = "its public key is not in publish.curve.authorized_keys_dir"
        log.warning("CURVE: refused a subscriber from %s (%s, client public key %s): %s%s",
                    address or "?", mechanism, key, reason, more)


@dataclass
class CurveServer:
    """The running ZAP handler of a CURVE server socket."""

    authenticator: ThreadAuthenticator
    allowed_clients_dir: Path

    def allowed_keys(self) -> int:
        return sum(1 for p in self.allowed_clients_dir.glob("*.key"))

    def reload(self) -> None:
        """Re-read the authorized keys directory (keys added or removed take effect for new
        connections; established ones keep their session).

        Every ``*.key`` file is checked first: pyzmq's ``configure_curve`` would only log a damaged
        file and keep no key at all (at start) or the previous ones (later), silently. Here a
        damaged file or a missing directory raises :class:`CurveError` naming it, and the keys
        loaded before stay in force."""
        if not self.allowed_clients_dir.is_dir():
            raise CurveError(f"{self.allowed_clients_dir}: authorized client keys directory does not exist")
        bad = []
        for key_file in sorted(self.allowed_clients_dir.glob("*.key")):
            try:
                load_public_key(key_file)
            except CurveError as exc:
                bad.append(str(exc))
        if bad:
            raise CurveError("; ".join(bad) + " (authorized keys not loaded)")
        self.authenticator.configure_curve(domain="*", location=str(self.allowed_clients_dir))
        log.info("CURVE: %d authorized client keys in %s", self.allowed_keys(), self.allowed_clients_dir)

    def stop(self) -> None:
        self.authenticator.stop()


def configure_server(
    socket: zmq.Socket,  # type: ignore[type-arg]
    server_secret_key_file: str | os.PathLike[str],
    allowed_clients_dir: str | os.PathLike[str],
) -> CurveServer:
    """Make ``socket`` a CURVE server that accepts only the clients whose public keys
    (``*.key`` files) are in ``allowed_clients_dir``. Call before ``bind``.

    Starts one ZAP handler thread on the socket's context; keep the returned object and call
    ``stop()`` at shutdown (before terminating the context) and ``reload()`` on SIGHUP.
    An empty or missing directory means no client is accepted: failing closed is the point.
    """
    _require_curve()
    public, secret = load_secret_key(server_secret_key_file)
    allowed = _path(allowed_clients_dir)
    _require_expanded(allowed)
    if not allowed.is_dir():
        raise CurveError(f"{allowed}: authorized client keys directory does not exist")
    auth = _RefusalLoggingAuthenticator(socket.context, log=logging.getLogger("daemon.publish.zap"))
    auth.start()
    server = CurveServer(auth, allowed)
    try:
        server.reload()
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
    except Exception:
        auth.stop()
        raise
    if server.allowed_keys() == 0:
        log.warning("CURVE: no authorized client keys in %s: every subscriber will be refused", allowed)
    return server


def check_files(curve: Any) -> list[str]:
    """Problems with the key files of a ``publish.curve`` config section (an object with
    ``server_secret_key`` and ``authorized_keys_dir``), as ``publish.curve.<key>: message`` lines;
    empty when the daemon will be able to load them. ``None`` (CURVE off) has no problems.

    Paths are expanded exactly as the daemon expands them (``os.path.expandvars``, ``~``), so
    ``$CREDENTIALS_DIRECTORY/...`` is checked where systemd puts the credential.
    """
    if curve is None:
        return []
    problems: list[str] = []
    if not zmq.has("curve"):
        return ["publish.curve: this libzmq was built without CURVE support"]
    try:
        load_secret_key(curve.server_secret_key)
    except CurveError as exc:
        problems.append(f"publish.curve.server_secret_key: {exc}")
    allowed = _path(curve.authorized_keys_dir)
    var = _unexpanded(allowed)
    if var is not None:
        problems.append(f"publish.curve.authorized_keys_dir: {allowed}: {var} is not set")
    elif not allowed.is_dir():
        problems.append(f"publish.curve.authorized_keys_dir: {allowed}: directory does not exist")
    else:
        for key_file in sorted(allowed.glob("*.key")):
            try:
                load_public_key(key_file)
            except CurveError as exc:  # the ZAP handler would refuse to load the whole directory
                problems.append(f"publish.curve.authorized_keys_dir: {exc}")
        if not any(allowed.glob("*.key")):
            log.warning("publish.curve.authorized_keys_dir: %s holds no *.key file: every subscriber "
                        "will be refused", allowed)
    return problems


@dataclass(frozen=True)
class ClientKeys:
    """What a subscriber needs to connect to a CURVE server: the server's public key file and
    its own key pair (a ``.key_secret`` file whose ``.key`` is in the server's directory)."""

    server_public_key_file: str
    client_key_file: str


def configure_client(
    socket: zmq.Socket,  # type: ignore[type-arg]
    server_public_key_file: str | os.PathLike[str],
    client_key_file: str | os.PathLike[str],
) -> None:
    """Make ``socket`` a CURVE client of the server whose public key is in
    ``server_public_key_file``, authenticating with the key pair in ``client_key_file``.
    Call before ``connect``."""
    _require_curve()
    server_public = load_public_key(server_public_key_file)
    public, secret = load_secret_key(client_key_file)
    socket.curve_serverkey = server_public
    socket.curve_publickey = public
    socket.curve_secretkey = secret


def generate_keypair(directory: str | os.PathLike[str], name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600) into ``directory``.

    Refuses to overwrite an existing pair unless ``force``: replacing a server key silently would
    lock out every subscriber.
    """
    _require_curve()
    d = _path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = d / f"{name}.key", d / f"{name}.key_secret"
    existing = [p for p in (public_file, secret_file) if p.exists()]
    if existing and not force:
        raise CurveError(f"{existing[0]} exists; pass --force to replace it")
    old_umask = os.umask(0o077)  # the secret file must never exist with a wider mode
    try:
        pub, sec = zmq.auth.create_certificates(str(d), name)
    finally:
        os.umask(old_umask)
    os.chmod(pub, 0o644)
    os.chmod(sec, 0o600)
    return Path(pub), Path(sec)
