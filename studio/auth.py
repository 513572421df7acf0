"""Who may use the studio: --auth protects every visitor, and --share never opens a public link unprotected.

A public link without --auth gets a generated password, printed once on the terminal that started the studio
(and nowhere else: not logged, not stored), so sharing is one flag and still safe.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

SHARE_USER = "studio"
AUTH_FORMAT_ERROR = "--auth must be user:password, both parts non-empty (e.g. --auth ada:correct-horse)."
SHARE_PASSWORD_NOTICE = (
    "--share without --auth: the public link asks for a login.\n"
    "    user: {user}\n"
    "    password: {password}\n"
    "This password is shown only now. To choose your own, start with --share --auth user:password."
)


class AuthError(ValueError):
    """The --auth argument cannot be used; the message says how to write it."""


@dataclass(frozen=True)
class Access:
    credentials: tuple[str, str] | None  # None: no login asked
    notice: str | None = None  # to print once at start (the generated password), else None


def parse_credentials(text: str) -> tuple[str, str]:
    """'user:password' -> (user, password); the password may contain ':'."""
    user, separator, password = text.partition(":")
    if not separator or not user.strip() or not password:
        raise AuthError(AUTH_FORMAT_ERROR)
    return user.strip(), password


def access_for(share: bool, auth: str | None,
               make_password: Callable[[], str] = lambda: secrets.token_urlsafe(12)) -> Access:
    """The login the studio asks for, given --share and --auth."""
    if auth is not None:
        return Access(parse_credentials(auth))
    if not share:
        return Access(None)
    password = make_password()
    return Access((SHARE_USER, password), SHARE_PASSWORD_NOTICE.format(user=SHARE_USER, password=password))
