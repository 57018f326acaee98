"""What the console tests share: an auth file of people with roles, sign-in, the CSRF token of a page."""

from __future__ import annotations

import hashlib
import re

from starlette.testclient import TestClient

from nba_service.api.auth import AuthFile

PEOPLE = {
    "vera": ("viewer",),
    "mark": ("marketing",),
    "alice": ("publisher", "marketing"),
    "paula": ("publisher", "pii"),
    "deci": ("decide",),
}
"""name -> roles; each signs in with the token ``<name>-token``."""


def auth_file() -> AuthFile:
    lines = ["clients:"]
    for name, roles in PEOPLE.items():
        digest = hashlib.sha256(f"{name}-token".encode()).hexdigest()
        lines.append(f"  - {{name: {name}, token_sha256: '{digest}', roles: [{', '.join(roles)}]}}")
    return AuthFile.parse("\n".join(lines) + "\n", "auth.yaml")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def sign_in(client: TestClient, name: str) -> str:
    """Sign ``name`` in; the session's CSRF token."""
    page = client.get("/login")
    answer = client.post("/login", data={"csrf": csrf_of(page.text), "token": f"{name}-token"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/history").text)
