"""``nba auth ...``: tokens for callers, and a check of the auth file."""

from __future__ import annotations

import argparse
import sys

from nba_service.api.auth import ROLES, AuthFile, AuthFileError, new_token


def _roles(text: str) -> list[str]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise argparse.ArgumentTypeError(f"unknown role {unknown[0]!r}" if unknown else "give at least one role")
    return roles


def cmd_token(args: argparse.Namespace) -> int:
    token, digest = new_token()
    print(f"token for {args.name} (shown once; give it to the caller, store only the digest):")
    print(f"  {token}")
    print("add to the auth file (--auth-file):")
    print(f"  - name: {args.name}")
    print(f'    token_sha256: "{digest}"')
    if args.cert_cn:
        print(f"    cert_cn: {args.cert_cn}")
    print(f"    roles: [{', '.join(args.roles)}]")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        auth = AuthFile.read(args.file)
    except AuthFileError as exc:
        print(f"nba auth check: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: {len(auth.clients)} callers")
    for client in auth.clients:
        how = " and ".join(
            part
            for part in ("token" if client.token_sha256 else "", f"cert {client.cert_cn}" if client.cert_cn else "")
            if part
        )
        print(f"  {client.name:24} {', '.join(sorted(client.roles)):28} by {how}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    auth = sub.add_parser("auth", help="callers' tokens and the auth file (docs/security.md)")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    token = auth_sub.add_parser("token", help="print a new random token once, and the auth-file entry for it")
    token.add_argument("name", help="the caller's name (shown in metrics and the consent audit)")
    token.add_argument("--roles", type=_roles, required=True, help=f"comma-separated, of: {', '.join(ROLES)}")
    token.add_argument("--cert-cn", help="also accept a client certificate with this CN or DNS SAN (mTLS)")
    token.set_defaults(func=cmd_token)
    check = auth_sub.add_parser("check", help="validate an auth file and list its callers")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)
