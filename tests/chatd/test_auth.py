"""Token verification matrix, bearer parsing, key files, dev keys and local profiles."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from chatd.auth import (
    KeyFileError,
    KeySet,
    TokenVerifier,
    bearer_token,
    ensure_dev_keys,
    load_private_key,
    load_public_key,
    mint_token,
    verifier_from_config,
    write_key_pair,
)
from chatd.auth.keys import generate_private_key, public_pem
from chatd.config import load_config
from chatd.domain.errors import NotFound, Unauthenticated
from chatd.profiles import LocalProfileProvider, Profile, ProfileProvider

ISSUER = "https://id.example.com/"
AUDIENCE = "chat"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture
def verifier(key: rsa.RSAPrivateKey) -> TokenVerifier:
    return TokenVerifier(key.public_key(), issuer=ISSUER, audience=AUDIENCE, leeway=5)


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def good(key: rsa.RSAPrivateKey, **kwargs: object) -> str:
    return mint_token(key, "  Alice@Example.COM ", 600, ISSUER, AUDIENCE, **kwargs)  # type: ignore[arg-type]


def test_valid_token_yields_the_normalized_email(
    key: rsa.RSAPrivateKey, verifier: TokenVerifier
) -> None:
    assert verifier.verify(good(key)) == "alice@example.com"
    assert verifier.claims(good(key))["iss"] == ISSUER


def _unsigned(claims: dict[str, object], alg: str = "none") -> str:
    return f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(claims)}."


def _matrix(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey) -> list[tuple[str | None, str]]:
    now = time.time()
    claims = {"sub": "alice@example.com", "exp": int(now) + 600, "iss": ISSUER, "aud": AUDIENCE}
    public_bytes = public_pem(key.public_key())
    # The classic confusion attack, built by hand: PyJWT itself refuses a PEM as HMAC secret.
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    mac = hmac.new(public_bytes, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    return [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("not-a-jwt", "malformed token"),
        ("a.b.c", "malformed token"),
        (good(key, now=now - 3600), "token expired"),
        (good(key, extra_claims={"nbf": int(now) + 600}), "token not yet valid"),
        (good(other), "token signature is invalid"),
        (_unsigned(claims), r"token algorithm not allowed \(RS256 only\)"),
        (forged, r"token algorithm not allowed \(RS256 only\)"),
        (mint_token(key, "a@example.com", 600, "https://evil/", AUDIENCE), "issuer not accepted"),
        (mint_token(key, "a@example.com", 600, ISSUER, "other"), "audience not accepted"),
        (mint_token(key, "a@example.com", 600, None, AUDIENCE), "lacks the 'iss' claim"),
        (good(key, extra_claims={"exp": None}), "lacks the 'exp' claim"),
        (
            jwt.encode({"sub": "a@example.com", "iss": ISSUER, "aud": AUDIENCE}, key, "RS256"),
            "lacks the 'exp' claim",
        ),
        (mint_token(key, "not an email", 600, ISSUER, AUDIENCE), "subject is not an email"),
        (good(key, extra_claims={"sub": "a@b/c.example.com"}), "subject is not an email"),
    ]


def test_rejection_matrix(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, verifier: TokenVerifier
) -> None:
    for token, message in _matrix(key, other_key):
        with pytest.raises(Unauthenticated, match=message):
            verifier.verify(token)


def test_leeway_accepts_small_clock_skew(key: rsa.RSAPrivateKey, verifier: TokenVerifier) -> None:
    just_expired = mint_token(key, "a@example.com", 10, ISSUER, AUDIENCE, now=time.time() - 12)
    assert verifier.verify(just_expired) == "a@example.com"


def test_unset_audience_ignores_aud_and_unset_issuer_ignores_iss(key: rsa.RSAPrivateKey) -> None:
    lenient = TokenVerifier(public_pem(key.public_key()))
    assert lenient.verify(mint_token(key, "b@example.com", 60, "any", "any")) == "b@example.com"


def test_key_set_selects_by_kid(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    keys = KeySet({"k1": key.public_key(), "k2": other_key.public_key()})
    verifier = TokenVerifier(keys)
    assert verifier.verify(mint_token(other_key, "c@example.com", 60, kid="k2")) == "c@example.com"
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier.verify(mint_token(key, "c@example.com", 60, kid="k3"))
    with pytest.raises(Unauthenticated, match="no kid"):
        verifier.verify(mint_token(key, "c@example.com", 60))
    with pytest.raises(Unauthenticated, match="signature"):
        verifier.verify(mint_token(key, "c@example.com", 60, kid="k2"))


def test_a_verified_token_is_remembered_but_still_expires(key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(key.public_key(), leeway=0)
    token = mint_token(key, "d@example.com", 1)
    assert verifier.verify(token) == "d@example.com"
    assert verifier.verify(token) == "d@example.com"  # from the cache
    time.sleep(
        max(0.0, jwt.decode(token, options={"verify_signature": False})["exp"] - time.time()) + 0.05
    )
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)


def test_new_keys_forget_tokens_verified_with_the_old(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    verifier = TokenVerifier(KeySet({"k1": key.public_key()}))
    token = mint_token(key, "e@example.com", 600, kid="k1")
    assert verifier.verify(token) == "e@example.com"
    verifier.replace_keys(KeySet({"k2": other_key.public_key()}))  # k1 retired
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier.verify(token)


def test_key_set_from_jwks(key: rsa.RSAPrivateKey) -> None:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    keys = KeySet.from_jwks({"keys": [{**jwk, "kid": "k1", "use": "sig"}, {"kty": "EC"}]})
    assert TokenVerifier(keys).verify(mint_token(key, "d@example.com", 60)) == "d@example.com"
    with pytest.raises(ValueError, match="no RSA signing key"):
        KeySet.from_jwks({"keys": []})


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer   abc ", "abc"), ("BEARER x.y.z", "x.y.z")],
)
def test_bearer_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer  ", "Basic dXNlcjpwYXNz", "abc"])
def test_bearer_token_refuses(header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        bearer_token(header)


def test_write_key_pair_modes_and_no_overwrite(tmp_path: Path) -> None:
    private_path, public_path = write_key_pair(tmp_path / "keys")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    private = load_private_key(private_path)
    assert load_public_key(public_path).public_numbers() == private.public_key().public_numbers()
    # A private key PEM also works where a public key is expected.
    assert load_public_key(private_path).public_numbers() == private.public_key().public_numbers()
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_pair(tmp_path / "keys")
    assert [p.name for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")] == []


def test_load_key_errors_name_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("hello")
    with pytest.raises(KeyFileError, match=f"^{bogus}: not a PEM public key"):
        load_public_key(bogus)
    with pytest.raises(KeyFileError, match=f"^{tmp_path / 'missing.pem'}: cannot read"):
        load_private_key(tmp_path / "missing.pem")


def test_ensure_dev_keys_is_idempotent(tmp_path: Path) -> None:
    private_path, public_path, created = ensure_dev_keys(tmp_path / "data")
    assert created
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    first = private_path.read_bytes()
    public_path.unlink()
    again = ensure_dev_keys(tmp_path / "data")
    assert again == (private_path, public_path, False)
    assert private_path.read_bytes() == first
    assert public_path.exists()


def test_verifier_from_config_uses_dev_keys_then_a_pem_file(tmp_path: Path) -> None:
    config = load_config(None, {}, overrides={"server.data_dir": str(tmp_path)})
    verifier = verifier_from_config(config)
    private_path, _, created = ensure_dev_keys(tmp_path)
    assert not created
    assert verifier.verify(mint_token(load_private_key(private_path), "e@example.com", 60)) == (
        "e@example.com"
    )
    other = tmp_path / "other"
    _, public_path = write_key_pair(other)
    config = load_config(None, {"CHATD_JWT_PUBLIC_KEY": str(public_path)})
    with pytest.raises(Unauthenticated, match="signature"):
        verifier_from_config(config).verify(
            mint_token(load_private_key(private_path), "e@example.com", 60)
        )


async def test_local_profiles_are_stable_and_named() -> None:
    provider: ProfileProvider = LocalProfileProvider()
    assert isinstance(provider, ProfileProvider)
    alice = await provider.lookup("Jane.Doe_x@example.com", "support")
    assert alice == await provider.lookup("jane.doe_x@example.com", "support")
    assert isinstance(alice, Profile)
    assert alice.display_name == "Jane Doe X"
    assert alice.id != (await provider.lookup("jane.doe_x@example.com", "sales")).id
    assert alice.id != (await provider.lookup("john@example.com", "support")).id
    with pytest.raises(NotFound):
        await provider.lookup("not-an-email", "support")


def test_fetch_jwks_from_a_fake_identity_provider(key: rsa.RSAPrivateKey) -> None:
    import httpx

    from chatd.auth.tokens import fetch_jwks

    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))

    def identity_provider(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jwks.json":
            return httpx.Response(200, json={"keys": [{**jwk, "kid": "k1"}]})
        return httpx.Response(404)

    transport = httpx.MockTransport(identity_provider)
    keys = fetch_jwks("https://id.example.com/jwks.json", transport=transport)
    assert TokenVerifier(keys).verify(mint_token(key, "f@example.com", 60, kid="k1")) == (
        "f@example.com"
    )
    with pytest.raises(KeyFileError, match=r"^https://id\.example\.com/missing: cannot load JWKS"):
        fetch_jwks("https://id.example.com/missing", transport=transport)


async def test_jwks_refresh_keeps_the_old_keys_when_the_provider_fails(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    import httpx

    from chatd.auth.jwks import JwksKeys

    published = {"k1": key}
    failing = False

    def identity_provider(request: httpx.Request) -> httpx.Response:
        if failing:
            return httpx.Response(503)
        return httpx.Response(
            200,
            json={
                "keys": [
                    {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())), "kid": kid}
                    for kid, k in published.items()
                ]
            },
        )

    now = [0.0]
    jwks = JwksKeys(
        "https://id.example.com/jwks.json",
        min_refresh_seconds=10,
        transport=httpx.MockTransport(identity_provider),
        clock=lambda: now[0],
    )
    verifier = TokenVerifier(jwks)
    assert await jwks.refresh()
    assert (await verifier.authenticate(mint_token(key, "g@example.com", 60, kid="k1"))).email == (
        "g@example.com"
    )
    failing = True
    now[0] = 100
    assert not await jwks.refresh()  # the provider is down: keep what we have
    assert verifier.verify(mint_token(key, "g@example.com", 60, kid="k1")) == "g@example.com"
    failing = False
    published["k2"] = other_key
    rotated = mint_token(other_key, "h@example.com", 60, kid="k2")
    assert (await verifier.authenticate(rotated)).email == "h@example.com"
    fetches = jwks.fetches
    now[0] = 105  # within min_refresh_seconds of the last unknown-kid refresh
    with pytest.raises(Unauthenticated, match="unknown key"):
        await verifier.authenticate(mint_token(other_key, "h@example.com", 60, kid="k3"))
    assert jwks.fetches == fetches
