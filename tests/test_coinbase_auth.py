"""Exchange credentials: environment loading, secrecy and the subscribe signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import pickle

import pytest

from coinbase.auth import Credentials, sign

SECRET = base64.b64encode(
    b"a very secret 64-byte key for the test suite ............"
).decode()
ENV = {
    "COINBASE_API_KEY": "key-123",
    "COINBASE_API_SECRET": SECRET,
    "COINBASE_API_PASSPHRASE": "pass phrase!",
}


def test_sign_matches_an_independent_hmac() -> None:
    expected = base64.b64encode(
        hmac.new(
            base64.b64decode(SECRET), b"1700000000GET/users/self/verify", hashlib.sha256
        ).digest()
    ).decode()
    assert sign(SECRET, "1700000000") == expected
    assert Credentials.from_env(ENV).sign("1700000000") == expected


def test_signature_depends_on_timestamp_method_and_path() -> None:
    base = sign(SECRET, "1700000000")
    assert sign(SECRET, "1700000001") != base
    assert sign(SECRET, "1700000000", method="POST") != base
    assert sign(SECRET, "1700000000", path="/orders") != base


def test_from_env_reads_all_three() -> None:
    creds = Credentials.from_env(ENV)
    assert (creds.key, creds.secret, creds.passphrase) == (
        "key-123",
        SECRET,
        "pass phrase!",
    )


@pytest.mark.parametrize(
    "missing",
    [
        ["COINBASE_API_KEY"],
        ["COINBASE_API_SECRET"],
        ["COINBASE_API_PASSPHRASE"],
        ["COINBASE_API_SECRET", "COINBASE_API_PASSPHRASE"],
    ],
)
def test_from_env_names_every_missing_variable(missing: list[str]) -> None:
    env = {k: v for k, v in ENV.items() if k not in missing}
    with pytest.raises(ValueError) as info:
        Credentials.from_env(env)
    for name in missing:
        assert name in str(info.value)
    for name in set(ENV) - set(missing):
        assert name not in str(info.value)


def test_empty_variable_counts_as_missing() -> None:
    with pytest.raises(ValueError, match="COINBASE_API_PASSPHRASE"):
        Credentials.from_env({**ENV, "COINBASE_API_PASSPHRASE": ""})


def test_secret_that_is_not_base64_is_refused_without_echoing_it() -> None:
    with pytest.raises(
        ValueError, match="COINBASE_API_SECRET is not valid base64"
    ) as info:
        Credentials("key", "not-base64!!secretvalue", "pp")
    assert "secretvalue" not in str(info.value)


def test_repr_and_str_hide_secret_and_passphrase() -> None:
    creds = Credentials.from_env(ENV)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert "key-123" in text
        assert SECRET not in text
        assert "pass phrase!" not in text


def test_credentials_are_immutable_and_picklable() -> None:
    creds = Credentials.from_env(ENV)
    with pytest.raises(AttributeError):
        creds.key = "other"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(creds)) == creds
