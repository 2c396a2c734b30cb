"""The web config file: TLS and basic auth for the HTTP endpoints.

The format is the Prometheus exporter toolkit's (``--web.config.file`` of
node_exporter and friends), so one file serves every exporter of a host. The
supported subset:

    tls_server_config:
      cert_file: /etc/celery-stalk/tls.crt
      key_file: /etc/celery-stalk/tls.key
      client_ca_file: /etc/celery-stalk/clients-ca.crt   # optional: mTLS
      client_auth_type: RequireAndVerifyClientCert        # with client_ca_file
      min_version: TLS12                                  # or TLS13
    basic_auth_users:
      prometheus: $2b$12$...                              # bcrypt hash

Anything else is refused at start rather than silently ignored: a security
setting that is not applied must not look applied.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import os
import re
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import bcrypt
import yaml

from .webstats import WebStats

log = logging.getLogger(__name__)

FLAG = "--web-config-file"
HASH_HINT = "make one with: celery-stalk hash-password"
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version")
BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
RELOAD_CHECK_INTERVAL = 1.0  # seconds between looks at the certificate files' mtimes
MAX_PASSWORD_BYTES = 72  # bcrypt uses no more (and bcrypt 5 refuses longer ones)


class WebConfigError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class TLSSettings:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2

    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)

    def build_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = self.min_version
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            context.load_verify_locations(self.client_ca_file)
        context.verify_mode = self.client_auth
        return context


class ServerTLS:
    """The server's SSL context, rebuilt when the certificate files change on
    disk (cert-manager and friends rotate them in place), so a renewed
    certificate is served without a restart."""

    def __init__(self, settings: TLSSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._context = settings.build_context()
        self._stamp = self._mtimes()
        self._checked = time.monotonic()

    def _mtimes(self) -> tuple[float, ...]:
        return tuple(os.stat(path).st_mtime for path in self.settings.files())

    def context(self) -> ssl.SSLContext:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= RELOAD_CHECK_INTERVAL:
                self._checked = now
                self._maybe_reload()
            return self._context

    def _maybe_reload(self) -> None:
        try:
            stamp = self._mtimes()
            if stamp != self._stamp:
                self._context = self.settings.build_context()
                self._stamp = stamp
                log.info("reloaded the TLS certificate from %s", self.settings.cert_file)
        except (OSError, ssl.SSLError) as exc:  # half-written during rotation: keep the old one
            log.warning("cannot reload the TLS certificate (%s); still serving the previous one", exc)


class Throttled(Exception):
    """A password check refused without running bcrypt; answer 429 with Retry-After."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class FailureBudget:
    """Wrong passwords each client may try: ``per_minute`` a minute, as a token bucket
    (a burst of that many, then one every 60/per_minute s). Clients are keyed by
    address (httpserver.client_key); the least recently seen are forgotten past
    MAX_CLIENTS, which only ever gives a client its full budget back."""

    MAX_CLIENTS = 4096

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, client: str) -> bool:
        """Spend one attempt of ``client``'s; False if it has none left."""
        with self._lock:
            tokens = self._tokens(client)
            if tokens < 1:
                return False
            self._set(client, tokens - 1)
            return True

    def refund(self, client: str) -> None:
        """The attempt was a right password: it costs nothing."""
        with self._lock:
            self._set(client, min(self.capacity, self._tokens(client) + 1))

    def retry_after(self) -> int:
        return max(1, math.ceil(1 / self.rate))

    def _tokens(self, client: str) -> float:
        tokens, when = self._buckets.get(client, (self.capacity, self.clock()))
        return min(self.capacity, tokens + (self.clock() - when) * self.rate)

    def _set(self, client: str, tokens: float) -> None:
        self._buckets[client] = (tokens, self.clock())
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.MAX_CLIENTS:
            self._buckets.popitem(last=False)


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, at a bounded cost.

    bcrypt is slow on purpose (~50-250 ms of CPU per check at cost 10-12), so:
    a verified user/password pair is remembered (as a SHA-256 digest, never the
    password itself) and later scrapes cost a hash lookup, even while others
    are throttled; at most ``max_concurrent`` checks run at once (others wait
    up to BUSY_WAIT, then get 429); each client address may get the password
    wrong ``max_failures`` times a minute (then 429 without a check).
    """

    MAX_REMEMBERED = 1000  # a few users with a few passwords each
    BUSY_WAIT = 2.0  # seconds a check waits for a free slot before 429

    def __init__(self, users: dict[str, bytes], max_concurrent: int, max_failures: int,
                 stats: WebStats):
        self.users = users
        self.stats = stats
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()
        self._checks = threading.BoundedSemaphore(max_concurrent)
        self._failures = FailureBudget(max_failures)
        # Checked against when the user is unknown, at the same cost, so a
        # wrong user name takes as long as a wrong password and does not
        # reveal which users exist.
        cost = max(int(BCRYPT_HASH.match(h.decode()).group(1)) for h in users.values()) if users else 4
        self._dummy_hash = bcrypt.hashpw(b"celery-stalk", bcrypt.gensalt(rounds=cost))

    def check(self, header: str | None, client: str = "") -> bool:
        """True for a right user and password; raises Throttled instead of checking
        when ``client`` is out of attempts or too many checks are running."""
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        key = hashlib.sha256(f"{user}\x00{password}".encode()).digest()
        with self._lock:
            if key in self._verified:
                return True
        if not self._failures.take(client):
            self.stats.throttled("client_failures")
            raise Throttled("too many wrong passwords from this address: wait",
                            self._failures.retry_after())
        secret = password.encode()
        hashed = self.users.get(user)
        if len(secret) > MAX_PASSWORD_BYTES:  # no bcrypt hash can match it (bcrypt refuses it)
            ok = False
        elif not self._checks.acquire(timeout=self.BUSY_WAIT):
            self._failures.refund(client)
            self.stats.throttled("busy")
            raise Throttled("too many password checks at once: retry", 1)
        else:
            try:
                ok = bcrypt.checkpw(secret, hashed or self._dummy_hash) and hashed is not None
            finally:
                self._checks.release()
        if ok:
            self._failures.refund(client)
            with self._lock:
                if len(self._verified) < self.MAX_REMEMBERED:
                    self._verified.add(key)
        else:
            self.stats.auth_failed()
        return ok


@dataclass(frozen=True)
class WebLimits:
    """What a client may cost the HTTP server before and during authentication
    (the --web-* flags of options.py; httpserver.py and BasicAuth enforce them)."""

    max_connections: int
    max_client_connections: int
    read_timeout: float  # seconds for the TLS handshake and the request head
    auth_max_concurrent: int
    auth_max_failures: int  # wrong passwords per client address per minute


@dataclass(frozen=True)
class WebConfig:
    tls: TLSSettings | None = None
    users: dict[str, bytes] = field(default_factory=dict)


def load(path: str) -> WebConfig:
    """Read and check the file; raise WebConfigError with one line per problem."""
    where = f"{FLAG} {path}"
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise WebConfigError([f"{where}: cannot read it ({exc.strerror}): check the path"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise WebConfigError([f"{where}: not valid YAML{at}: fix the syntax"]) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise WebConfigError([f"{where}: must be a mapping with tls_server_config and/or basic_auth_users"])

    problems: list[str] = []
    for key in raw:
        if key not in ("tls_server_config", "basic_auth_users"):
            problems.append(
                f"{where}: {key!r} is not supported by celery-stalk: remove it "
                "(supported: tls_server_config, basic_auth_users)"
            )
    tls = _tls(raw.get("tls_server_config"), where, problems)
    users = _users(raw.get("basic_auth_users"), where, problems)
    if problems:
        raise WebConfigError(problems)
    return WebConfig(tls=tls, users=users)


def _tls(raw: object, where: str, problems: list[str]) -> TLSSettings | None:
    if raw is None:
        return None
    where = f"{where}: tls_server_config"
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping with cert_file and key_file")
        return None
    for key in raw:
        if key not in TLS_KEYS:
            problems.append(
                f"{where}.{key}: not supported by celery-stalk: remove it "
                f"(supported: {', '.join(TLS_KEYS)})"
            )
    cert, key, ca = raw.get("cert_file"), raw.get("key_file"), raw.get("client_ca_file")
    if not cert or not key:
        problems.append(f"{where}: set both cert_file and key_file (PEM files) to serve TLS")
        return None
    auth_name = raw.get("client_auth_type") or "NoClientCert"
    auth = CLIENT_AUTH.get(auth_name)
    if auth is None:
        problems.append(
            f"{where}.client_auth_type: {auth_name!r} is not supported: use one of "
            f"{', '.join(CLIENT_AUTH)} (RequireAndVerifyClientCert for mTLS)"
        )
        return None
    if ca and auth == ssl.CERT_NONE:
        problems.append(
            f"{where}: client_ca_file is set but client certificates are not checked: "
            "add client_auth_type: RequireAndVerifyClientCert"
        )
    if auth != ssl.CERT_NONE and not ca:
        problems.append(f"{where}: client_auth_type {auth_name} needs client_ca_file (the CA of the clients)")
    version_name = raw.get("min_version") or "TLS12"
    version = TLS_VERSIONS.get(version_name)
    if version is None:
        problems.append(f"{where}.min_version: {version_name!r} is not one of {', '.join(TLS_VERSIONS)}")
        version = ssl.TLSVersion.TLSv1_2
    settings = TLSSettings(str(cert), str(key), str(ca) if ca else None, auth, version)
    for name, path in (("cert_file", cert), ("key_file", key), ("client_ca_file", ca)):
        if path and not os.access(str(path), os.R_OK):
            problems.append(f"{where}.{name}: cannot read {path}: check the path")
    if problems:
        return None
    try:
        settings.build_context()  # fail now, not at the first scrape
    except (OSError, ssl.SSLError) as exc:
        problems.append(
            f"{where}: cert_file/key_file/client_ca_file are not a matching PEM certificate, "
            f"key and CA ({getattr(exc, 'reason', None) or exc}): check the files"
        )
    return settings


def _users(raw: object, where: str, problems: list[str]) -> dict[str, bytes]:
    if raw is None:
        return {}
    where = f"{where}: basic_auth_users"
    if not isinstance(raw, dict):
        problems.append(f"{where}: must map user names to bcrypt hashes ({HASH_HINT})")
        return {}
    users = {}
    for user, hashed in raw.items():
        if not isinstance(user, str) or not user or ":" in user:
            problems.append(f"{where}: {user!r} is not a valid user name (non-empty, no colon)")
            continue
        if not _is_bcrypt(hashed):
            # Never echo the value: it may be a plain-text password.
            problems.append(f"{where}.{user}: not a bcrypt hash ($2b$...): {HASH_HINT}")
            continue
        users[user] = hashed.encode()
    return users


def _is_bcrypt(value: object) -> bool:
    return isinstance(value, str) and BCRYPT_HASH.fullmatch(value) is not None


def hash_password(password: str, rounds: int = 12) -> str:
    """The bcrypt hash of ``password``; ValueError with the fix for one bcrypt cannot take."""
    secret = password.encode()
    if len(secret) > MAX_PASSWORD_BYTES:
        raise ValueError(
            f"the password is {len(secret)} bytes and bcrypt takes at most {MAX_PASSWORD_BYTES}: "
            "choose a shorter one"
        )
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds=rounds)).decode()
