"""Redis URLs: the credentials and TLS options one ``NBA_REDIS_URL`` carries, and how to log one.

nba reaches Redis with one URL. An ACL user's name and password go in it
(``rediss://nba:PASSWORD@redis:6380/0``), and so do the TLS files, as the query
parameters redis-py's ``from_url`` takes (:data:`TLS_OPTIONS`)::

    rediss://nba:PASSWORD@redis:6380/0?ssl_ca_certs=/etc/nba/redis/ca.pem
    rediss://nba:PASSWORD@redis:6380/0?ssl_ca_certs=/etc/nba/redis/ca.pem&ssl_certfile=/etc/nba/redis/tls.crt&ssl_keyfile=/etc/nba/redis/tls.key

``rediss://`` verifies the server's certificate (against ``ssl_ca_certs``, or
the system's CAs without it) and its host name; ``ssl_certfile`` and
``ssl_keyfile`` present a client certificate (Redis ``tls-auth-clients yes``).
Characters such as ``@ : / ? # %`` in the password are percent-encoded.

redis-py's clients read all of this from the URL themselves; the decision
path's own connection (:mod:`nba_service.store.script_connection`) builds the
same TLS context with :func:`tls_context`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from redis.connection import parse_url

__all__ = ["TLS_OPTIONS", "check_redis_url", "redacted_url", "tls_context", "url_from_options"]

TLS_OPTIONS = (
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_ca_data",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "ssl_include_verify_flags",
    "ssl_exclude_verify_flags",
    "ssl_min_version",
    "ssl_ciphers",
)
"""The TLS options of a ``rediss://`` URL (redis-py's ``SSLConnection`` arguments) nba's connections all honour."""

_SECRET_PARAMETERS = frozenset({"password", "ssl_password", "sentinel_password"})
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_MASK = "***"


def redacted_url(url: str) -> str:
    """``url`` fit for a log line: its password (and any ``password``, ``ssl_password`` or ``sentinel_password``
    parameter) masked.

    >>> redacted_url("rediss://nba:s3cret@redis:6380/0?ssl_ca_certs=/etc/nba/ca.pem")
    'rediss://nba:***@redis:6380/0?ssl_ca_certs=/etc/nba/ca.pem'
    >>> redacted_url("redis://:p%40ss@localhost:6379/0")
    'redis://:***@localhost:6379/0'
    >>> redacted_url("redis://redis:6379/0?password=s3cret&db=1")
    'redis://redis:6379/0?password=***&db=1'
    >>> redacted_url("redis://nba:s3cret@/0?sentinel_password=s3cret2")
    'redis://nba:***@/0?sentinel_password=***'
    >>> redacted_url("unix:///tmp/nba/redis.socket")
    'unix:///tmp/nba/redis.socket'
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url if "@" not in url else "<a Redis URL>"
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, rest = rest[:end], rest[end:]
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{_MASK}@{host}"
    path, question, query = rest.partition("?")
    query, hash_, fragment = query.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name in _SECRET_PARAMETERS for name, _ in pairs):
        masked = [(name, _MASK if name in _SECRET_PARAMETERS else value) for name, value in pairs]
        query = urlencode(masked, safe="/*,")
    return f"{scheme}://{netloc}{path}{question}{query}{hash_}{fragment}"


def tls_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context redis-py's ``SSLConnection`` builds from the same options (``parse_url``'s, or a
    client's connection arguments): the server verified, and its host name, unless the options say not.

    Raises ValueError for an option that cannot be used and OSError (``ssl.SSLError`` included) for a
    file that cannot be read.
    """
    unknown = sorted(name for name in options if name.startswith("ssl_") and name not in TLS_OPTIONS)
    if unknown:
        raise ValueError(f"unknown TLS option(s) {', '.join(unknown)} (known: {', '.join(TLS_OPTIONS)})")
    cert_reqs = options.get("ssl_cert_reqs") or "required"
    if isinstance(cert_reqs, str):
        if cert_reqs.lower() not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs={cert_reqs!r}: one of {', '.join(_CERT_REQS)}")
        cert_reqs = _CERT_REQS[cert_reqs.lower()]
    check_hostname = options.get("ssl_check_hostname", True)
    if isinstance(check_hostname, str):
        check_hostname = check_hostname.lower() not in ("0", "f", "false", "n", "no", "off")
    context = ssl.create_default_context()
    context.check_hostname = bool(check_hostname) and cert_reqs != ssl.CERT_NONE
    context.verify_mode = ssl.VerifyMode(cert_reqs)
    for flag in options.get("ssl_include_verify_flags") or ():
        context.verify_flags |= flag
    for flag in options.get("ssl_exclude_verify_flags") or ():
        context.verify_flags &= ~flag
    certfile, keyfile = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if certfile or keyfile:
        if not certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
        context.load_cert_chain(certfile, keyfile, password=options.get("ssl_password"))
    cafile, capath, cadata = options.get("ssl_ca_certs"), options.get("ssl_ca_path"), options.get("ssl_ca_data")
    if cafile or capath or cadata:
        context.load_verify_locations(cafile=cafile, capath=capath, cadata=cadata)
    if options.get("ssl_min_version") is not None:
        context.minimum_version = ssl.TLSVersion(int(options["ssl_min_version"]))
    if options.get("ssl_ciphers"):
        context.set_ciphers(options["ssl_ciphers"])
    return context


def check_redis_url(url: str) -> None:
    """Fail now, with a message naming the problem (and no password), on a URL nba cannot connect with:
    a scheme other than ``redis``, ``rediss`` or ``unix``, TLS options without ``rediss://``, or TLS
    options or files that do not work (the context is built, so the files are read). Raises ValueError.
    """
    shown = redacted_url(url)
    try:
        options: dict[str, Any] = parse_url(url)
    except ValueError as exc:
        raise ValueError(f"{shown}: {exc}") from None
    tls = [name for name in options if name.startswith("ssl_")]
    if not url.startswith("rediss://"):
        if tls:
            raise ValueError(f"{shown}: {', '.join(tls)} need a rediss:// URL (TLS)")
        return
    try:
        tls_context(options)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{shown}: {exc}") from None


def url_from_options(options: Mapping[str, Any], *, tls: bool = False) -> str:
    """A URL that connects as a client's connection arguments ``options`` do: the host and port (or the
    unix socket), database, user name and password and, with ``tls``, the TLS options as parameters.

    >>> options = {"host": "redis", "port": 6380, "db": 0, "username": "nba", "password": "p@ss/1",
    ...            "ssl_ca_certs": "/etc/nba/ca.pem", "ssl_cert_reqs": "required", "ssl_keyfile": None}
    >>> url_from_options(options, tls=True)
    'rediss://nba:p%40ss%2F1@redis:6380/0?ssl_ca_certs=/etc/nba/ca.pem&ssl_cert_reqs=required'
    >>> url_from_options({"path": "/tmp/redis.sock", "db": 2})
    'unix:///tmp/redis.sock?db=2'
    """
    auth = ""
    if options.get("password") or options.get("username"):
        auth = f"{quote(options.get('username') or '', safe='')}:{quote(options.get('password') or '', safe='')}@"
    db = options.get("db") or 0
    if options.get("path"):
        return f"unix://{auth}{quote(os.fspath(options['path']))}?db={db}"
    host = str(options.get("host") or "localhost")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    url = f"{'rediss' if tls else 'redis'}://{auth}{host}:{options.get('port') or 6379}/{db}"
    if not tls:
        return url
    parameters = [(name, _parameter(options[name])) for name in TLS_OPTIONS if options.get(name) is not None]
    return f"{url}?{urlencode(parameters, safe='/')}" if parameters else url


def _parameter(value: Any) -> str:
    """A TLS option's value as ``parse_url`` reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, ssl.VerifyMode):
        return {mode: name for name, mode in _CERT_REQS.items()}[value]
    if isinstance(value, ssl.TLSVersion):
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(flag.name if isinstance(flag, ssl.VerifyFlags) and flag.name else str(flag) for flag in value)
    return str(value)
