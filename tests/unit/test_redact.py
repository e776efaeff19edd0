"""keys.redact: URLs fit for a log line, with credential-like query values masked and the rest kept."""

from __future__ import annotations

import pytest

from cacheaddon import keys


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://pypi.org/simple/requests/", "https://pypi.org/simple/requests/"),
        ("https://h/p?token=abc123", "https://h/p?token=***"),
        ("https://h/p?access_token=abc&page=2", "https://h/p?access_token=***&page=2"),
        ("https://h/p?page=2&api_key=k-1", "https://h/p?page=2&api_key=***"),
        ("https://h/p?apikey=k", "https://h/p?apikey=***"),
        ("https://h/p?client_secret=s", "https://h/p?client_secret=***"),
        ("https://h/p?password=hunter2&user=bob", "https://h/p?password=***&user=bob"),
        ("https://h/p?passwd=hunter2", "https://h/p?passwd=***"),
        ("https://h/p?auth=Basic%20eA%3D%3D", "https://h/p?auth=***"),
        (
            "https://h/p?X-Amz-Signature=deadbeef&X-Amz-Expires=60",
            "https://h/p?X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        ("https://h/p?sig=abc&se=2030", "https://h/p?sig=***&se=2030"),
        ("https://h/p?TOKEN=abc", "https://h/p?TOKEN=***"),
        ("https://h/p?token=abc#frag", "https://h/p?token=***#frag"),
        ("https://h/p?token=", "https://h/p?token=***"),
        ("https://h/p?page=2&sort=name&q=requests", "https://h/p?page=2&sort=name&q=requests"),
        ("https://h/p?version=1.0&name=x", "https://h/p?version=1.0&name=x"),
    ],
)
def test_credential_like_query_values_are_masked(url: str, expected: str) -> None:
    assert keys.redact(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://registry.npmjs.org/@scope%2ftoken-helper/-/token-helper-1.0.0.tgz",
        "https://files.pythonhosted.org/packages/ab/cd/secretstorage-3.3.3-py3-none-any.whl",
        "https://pypi.org/simple/keyring/",
    ],
)
def test_paths_that_merely_mention_a_secret_are_kept(url: str) -> None:
    assert keys.redact(url) == url


def test_the_secret_itself_never_survives() -> None:
    secret = "npm_Zq8yK2w9cVt4"
    url = f"https://r.example/pkg?_authToken={secret}&other={secret[:3]}&key={secret}"
    redacted = keys.redact(url)
    assert secret not in redacted
    assert redacted == f"https://r.example/pkg?_authToken=***&other={secret[:3]}&key=***"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h/simple/six/?\x00", "https://h/simple/six/?%00"),
        ("https://h/p\r\nHIT 200 1 https://forged/", "https://h/p%0D%0AHIT 200 1 https://forged/"),
        ("https://h/p?token=a\x7fb", "https://h/p?token=***"),
    ],
)
def test_control_characters_are_escaped(url: str, expected: str) -> None:
    assert keys.redact(url) == expected


def test_an_absurdly_long_url_is_cut() -> None:
    url = "https://h/" + "p" * 70_000
    logged = keys.redact(url)
    assert logged.startswith("https://h/ppp") and logged.endswith(f"...({len(url)} characters)")
    assert len(logged) < 2100
