"""Who is calling: authenticated callers and their roles.

The auth interceptor (:class:`AuthInterceptor`) identifies every call's caller
(a bearer token, or the client certificate's subject CN or DNS SAN under
mTLS), checks the method against the caller's roles, and sets
:data:`CALLER` for the handler: servicers read it with :func:`current_caller`
(e.g. to name the caller in the consent audit, or to show sensitive
attributes only to the ``pii`` role).
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import hmac
import os
import pathlib
import re
import secrets
from collections.abc import Iterable

import yaml

from nba_service.settings import SettingsError

__all__ = [
    "CALLER",
    "LOCAL",
    "ROLES",
    "AuthFile",
    "AuthFileError",
    "Caller",
    "Client",
    "current_caller",
    "new_token",
]

ROLES = ("decide", "agent", "crm", "pii", "viewer", "marketing", "publisher", "admin")
"""``decide``: Decide, DecideStream, ReportOutcome, RecordEvent. ``agent``: GetCustomerContext, and Decide on
``agent_contact`` events. ``crm``: UpsertCustomer, DeleteCustomer. ``pii``: sensitive attribute values
in GetCustomerContext (and in the console). ``viewer``: the console's pages, read only. ``marketing``: the
console's previews and edits, and the campaign service. ``publisher``: publishing and rolling back policy
versions from the console. ``admin``: everything."""


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: its name in the auth file and its roles."""

    name: str
    roles: frozenset[str]

    def has(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles


LOCAL = Caller("local", frozenset({"admin"}))
"""The caller when no auth file is configured (plaintext on loopback, or ``--insecure-no-auth``)."""

CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("nba_caller", default=LOCAL)


def current_caller() -> Caller:
    """The caller of the RPC being handled (:data:`LOCAL` when auth is off, and outside an RPC)."""
    return CALLER.get()


# --- the auth file -------------------------------------------------------------------


class AuthFileError(SettingsError):
    """The auth file cannot be used; the message names the file and line."""


@dataclasses.dataclass(frozen=True, slots=True)
class Client:
    """One entry of the auth file."""

    name: str
    roles: frozenset[str]
    token_sha256: bytes | None = None
    """The SHA-256 digest of the client's bearer token (never the token)."""
    cert_cn: str = ""
    """The mTLS identity: the client certificate's subject CN or one of its DNS SANs."""


@dataclasses.dataclass(frozen=True, slots=True)
class AuthFile:
    """The callers the server accepts, read from YAML::

    clients:
      - name: atm-backend
        token_sha256: "<hex sha256 of the bearer token>"   # and/or
        cert_cn: atm-backend.bank.internal                  # mTLS identity
        roles: [decide]
    """

    path: str
    clients: tuple[Client, ...]

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> AuthFile:
        try:
            text = pathlib.Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthFileError(f"{path}: cannot read the auth file: {exc.strerror or exc}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, path: str = "<auth file>") -> AuthFile:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise AuthFileError(f"{path}:{mark.line + 1 if mark else 1}: YAML: {exc.problem or exc.context}") from None
        if not isinstance(root, yaml.MappingNode):
            raise AuthFileError(f"{path}:1: expected a mapping with a 'clients' list")
        fields = {k.value: v for k, v in root.value}
        unknown = set(fields) - {"clients"}
        if unknown:
            raise AuthFileError(f"{path}:1: unknown key {sorted(unknown)[0]!r} (known: clients)")
        listed = fields.get("clients")
        if not isinstance(listed, yaml.SequenceNode):
            line = listed.start_mark.line + 1 if listed is not None else 1
            raise AuthFileError(f"{path}:{line}: clients: expected a list of clients")
        clients = [_client(node, path) for node in listed.value]
        seen: dict[str, int] = {}
        digests: dict[bytes, str] = {}
        for node, client in zip(listed.value, clients, strict=True):
            line = node.start_mark.line + 1
            if client.name in seen:
                raise AuthFileError(
                    f"{path}:{line}: client {client.name!r} is already defined on line {seen[client.name]}"
                )
            seen[client.name] = line
            if client.token_sha256 is not None:
                if client.token_sha256 in digests:
                    raise AuthFileError(
                        f"{path}:{line}: client {client.name!r} has the same token as {digests[client.token_sha256]!r}"
                    )
                digests[client.token_sha256] = client.name
        return cls(path, tuple(clients))

    def by_token(self, token: str) -> Client | None:
        """The client whose token this is, comparing every digest in constant time."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for client in self.clients:
            if client.token_sha256 is not None and hmac.compare_digest(client.token_sha256, digest):
                found = client
        return found

    def by_certificate(self, identities: Iterable[str]) -> Client | None:
        """The client whose ``cert_cn`` is one of the certificate's identities (subject CN, DNS SANs)."""
        names = set(identities)
        for client in self.clients:
            if client.cert_cn and client.cert_cn in names:
                return client
        return None


_CLIENT_KEYS = {"name", "token_sha256", "cert_cn", "roles"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _client(node: yaml.Node, path: str) -> Client:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        raise AuthFileError(f"{path}:{line}: a client is a mapping with name, roles and token_sha256 or cert_cn")
    fields = {k.value: v for k, v in node.value}
    for key_node, _ in node.value:
        if key_node.value not in _CLIENT_KEYS:
            raise AuthFileError(
                f"{path}:{key_node.start_mark.line + 1}: unknown key {key_node.value!r} "
                f"(known: {', '.join(sorted(_CLIENT_KEYS))})"
            )

    def text(key: str) -> str:
        value = fields.get(key)
        if value is None:
            return ""
        if not isinstance(value, yaml.ScalarNode) or not str(value.value).strip():
            raise AuthFileError(f"{path}:{value.start_mark.line + 1}: {key}: expected a non-empty string")
        return str(value.value).strip()

    name = text("name")
    if not name:
        raise AuthFileError(f"{path}:{line}: a client needs a name")
    digest = text("token_sha256").lower()
    if digest and not _HEX64.match(digest):
        where = fields["token_sha256"].start_mark.line + 1
        raise AuthFileError(
            f"{path}:{where}: client {name!r}: token_sha256 must be the 64 hex digits of the token's SHA-256 "
            "(`nba auth token NAME` prints it), never the token itself"
        )
    cert_cn = text("cert_cn")
    if not digest and not cert_cn:
        raise AuthFileError(f"{path}:{line}: client {name!r} needs token_sha256 or cert_cn (or both)")
    roles_node = fields.get("roles")
    if not isinstance(roles_node, yaml.SequenceNode) or not roles_node.value:
        where = roles_node.start_mark.line + 1 if roles_node is not None else line
        raise AuthFileError(f"{path}:{where}: client {name!r}: roles: expected a list, e.g. [decide]")
    roles = []
    for role_node in roles_node.value:
        role = str(getattr(role_node, "value", "")).strip()
        if role not in ROLES:
            raise AuthFileError(
                f"{path}:{role_node.start_mark.line + 1}: client {name!r}: unknown role {role!r} "
                f"(roles: {', '.join(ROLES)})"
            )
        roles.append(role)
    return Client(name, frozenset(roles), bytes.fromhex(digest) if digest else None, cert_cn)


def new_token() -> tuple[str, str]:
    """A new random bearer token and the hex SHA-256 digest the auth file holds."""
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()
