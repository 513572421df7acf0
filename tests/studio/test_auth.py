"""--auth and --share: a login for everyone when asked, and never a public link without one."""

from __future__ import annotations

import pytest

import app
from studio.auth import (
    AUTH_FORMAT_ERROR,
    SHARE_USER,
    AuthError,
    access_for,
    parse_credentials,
)


def test_credentials_split_at_the_first_colon_so_passwords_may_hold_colons():
    assert parse_credentials("ada:se:cret") == ("ada", "se:cret")


@pytest.mark.parametrize("text", ["ada", "ada:", ":secret", " :secret", ""])
def test_error_raised_if_auth_is_not_user_colon_password(text):
    with pytest.raises(AuthError) as caught:
        parse_credentials(text)
    assert str(caught.value) == ("--auth must be user:password, both parts non-empty "
                                 "(e.g. --auth ada:correct-horse).")
    assert str(caught.value) == AUTH_FORMAT_ERROR


def test_local_use_without_auth_asks_no_login():
    assert access_for(share=False, auth=None).credentials is None


def test_auth_protects_local_use_too():
    access = access_for(share=False, auth="ada:secret")
    assert access.credentials == ("ada", "secret")
    assert access.notice is None


def test_share_with_auth_uses_the_given_login_and_prints_nothing():
    access = access_for(share=True, auth="ada:secret")
    assert access.credentials == ("ada", "secret")
    assert access.notice is None


def test_share_without_auth_gets_a_generated_password_announced_word_for_word():
    access = access_for(share=True, auth=None, make_password=lambda: "pw-123")
    assert access.credentials == (SHARE_USER, "pw-123")
    assert access.notice == (
        "--share without --auth: the public link asks for a login.\n"
        "    user: studio\n"
        "    password: pw-123\n"
        "This password is shown only now. To choose your own, start with --share --auth user:password.")


def test_generated_passwords_differ_between_starts():
    assert access_for(True, None).credentials != access_for(True, None).credentials


def test_app_prints_the_generated_password_once_and_launches_with_it(monkeypatch, capsys):
    launched = []
    monkeypatch.setattr("studio.shell.launch", lambda services, access: launched.append((services, access)))
    assert app.main(["--share"]) == 0
    (services, access), = launched
    user, password = access.credentials
    out = capsys.readouterr().out
    assert out.count(password) == 1 and out.count("password:") == 1
    assert services.config.share and services.config.credentials == (user, password)


def test_app_refuses_a_malformed_auth_with_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr("studio.shell.launch", lambda *args: pytest.fail("must not start"))
    assert app.main(["--share", "--auth", "ada"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {AUTH_FORMAT_ERROR}"]
