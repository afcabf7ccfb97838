"""The JWT verifier (``waypoint/policy/jwt.py``) and the authenticator (``jwt_authenticator.py``), table-driven.

Expected texts are ``jwt_verify_lib`` ``src/status.cc`` ``getStatusString``; the order of checks and the
403 for audiences are Envoy's ``jwt_authn/authenticator.cc`` ``startVerify`` and ``filter.cc`` ``onComplete``.
Keys are made here with ``cryptography``; :func:`sign` and :func:`jwk` are shared with the end-to-end tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from waypoint.policy import jwt
from waypoint.policy.jwt_authenticator import JwtAuthenticator
from waypoint.policy.request_authn import JwtRule

NOW = 1_800_000_000
ISS = "https://issuer.example"
_H: dict[str, Callable[[], hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int, size: int | None = None) -> str:
    return _b64(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


def sign(payload: dict[str, Any], key: Any, alg: str = "RS256", kid: str = "k1", **header: Any) -> str:
    """A compact JWS of ``payload`` signed with ``key`` (a private key, or bytes for HS*)."""
    head = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {}), **header}
    signing_input = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(payload).encode())}".encode()
    family, bits = alg[:2], alg[2:]
    if family == "RS":
        sig = key.sign(signing_input, padding.PKCS1v15(), _H[bits]())
    elif family == "PS":
        sig = key.sign(signing_input, padding.PSS(padding.MGF1(_H[bits]()), _H[bits]().digest_size), _H[bits]())
    elif family == "ES":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(_H[bits]())))
        size = (key.curve.key_size + 7) // 8
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif family == "HS":
        sig = hmac.new(key, signing_input, getattr(hashlib, f"sha{bits}")).digest()
    else:  # EdDSA
        sig = key.sign(signing_input)
    return f"{signing_input.decode()}.{_b64(sig)}"


def jwk(key: Any, kid: str = "k1", alg: str = "") -> dict[str, Any]:
    """The public JWK of a private key (or an ``oct`` key for bytes)."""
    out: dict[str, Any] = {"kid": kid, **({"alg": alg} if alg else {})}
    if isinstance(key, bytes):
        return {**out, "kty": "oct", "k": _b64(key)}
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        rsa_nums = public.public_numbers()
        return {**out, "kty": "RSA", "n": _int(rsa_nums.n), "e": _int(rsa_nums.e)}
    if isinstance(public, ec.EllipticCurvePublicKey):
        ec_nums = public.public_numbers()
        size = (public.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[public.curve.name]
        return {**out, "kty": "EC", "crv": crv, "x": _int(ec_nums.x, size), "y": _int(ec_nums.y, size)}
    crv = "Ed25519" if isinstance(public, ed25519.Ed25519PublicKey) else "Ed448"
    return {**out, "kty": "OKP", "crv": crv, "x": _b64(public.public_bytes(Encoding.Raw, PublicFormat.Raw))}


def jwks_text(*keys: dict[str, Any]) -> str:
    return json.dumps({"keys": list(keys)})


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEYS: dict[str, Any] = {
    "RS256": RSA, "RS384": RSA, "RS512": RSA, "PS256": RSA, "PS384": RSA, "PS512": RSA,
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    "HS256": b"0123456789abcdef0123456789abcdef",
}
CLAIMS = {"iss": ISS, "sub": "alice", "exp": NOW + 600, "aud": "svc"}


def check(token: str, keys: jwt.Jwks, now: float = NOW, audiences: frozenset[str] = frozenset()) -> jwt.Failure | None:
    """Envoy's order for one provider: parse, time, audience, signature."""
    parsed = jwt.parse_token(token)
    if isinstance(parsed, jwt.Failure):
        return parsed
    return (
        jwt.check_time(parsed, now)
        or (None if jwt.audience_allowed(parsed, audiences) else jwt.AUDIENCE)
        or jwt.verify_signature(parsed, keys)
    )


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_each_algorithm_verifies_and_rejects_a_foreign_signature(alg: str) -> None:
    key = KEYS[alg]
    keys = jwt.parse_jwks(jwks_text(jwk(key)))
    assert check(sign(CLAIMS, key, alg), keys) is None
    other: Any
    if alg == "EdDSA":
        other = ed448.Ed448PrivateKey.generate()
    elif alg == "HS256":
        other = b"x" * 32
    else:
        other = OTHER_RSA if alg[:2] in ("RS", "PS") else ec.generate_private_key(type(key.curve)())
    assert check(sign(CLAIMS, other, alg), keys) == jwt.VERIFICATION


def test_ed448_key_verifies() -> None:
    key = ed448.Ed448PrivateKey.generate()
    assert check(sign(CLAIMS, key, "EdDSA"), jwt.parse_jwks(jwks_text(jwk(key)))) is None


RSA_KEYS = jwt.parse_jwks(jwks_text(jwk(RSA)))
GOOD = sign(CLAIMS, RSA)


def _part(token: str, index: int, raw: bytes | str) -> str:
    """``token`` with part ``index`` replaced (``raw`` bytes are base64url-encoded)."""
    parts = token.split(".")
    parts[index] = _b64(raw) if isinstance(raw, bytes) else raw
    return ".".join(parts)


FAILURES: list[tuple[str, str, float, jwt.Failure | None]] = [
    ("valid", GOOD, NOW, None),
    ("expired", sign({**CLAIMS, "exp": NOW - 61}, RSA), NOW, jwt.EXPIRED),
    ("expired within 60 s of skew", sign({**CLAIMS, "exp": NOW - 59}, RSA), NOW, None),
    ("not yet valid", sign({**CLAIMS, "nbf": NOW + 61}, RSA), NOW, jwt.NOT_YET_VALID),
    ("nbf within skew", sign({**CLAIMS, "nbf": NOW + 59}, RSA), NOW, None),
    ("no exp never expires", sign({"iss": ISS, "sub": "a"}, RSA), NOW, None),
    ("tampered payload", _part(GOOD, 1, json.dumps({**CLAIMS, "sub": "mallory"}).encode()), NOW, jwt.VERIFICATION),
    ("two parts", "a.b", NOW, jwt.BAD_FORMAT),
    ("header not JSON", "bm90anNvbg.e30.c2ln", NOW, jwt.HEADER_PARSE),
    ("alg none", _part(GOOD, 0, b'{"alg":"none"}'), NOW, jwt.ALG_NOT_IMPLEMENTED),
    ("alg not a string", _part(GOOD, 0, b'{"alg":1}'), NOW, jwt.BAD_ALG),
    ("kid not a string", _part(GOOD, 0, b'{"alg":"RS256","kid":1}'), NOW, jwt.BAD_KID),
    ("payload not JSON", _part(GOOD, 1, "bm90"), NOW, jwt.PAYLOAD_PARSE),
    ("exp not a number", sign({**CLAIMS, "exp": "soon"}, RSA), NOW, jwt.PAYLOAD_PARSE),
    ("aud not strings", sign({**CLAIMS, "aud": [1]}, RSA), NOW, jwt.PAYLOAD_PARSE),
    ("signature not base64url", GOOD + "!", NOW, jwt.SIGNATURE_PARSE),
    ("kid unknown", sign(CLAIMS, RSA, kid="other"), NOW, jwt.KID_ALG_MISMATCH),
    ("no kid tries every key", sign(CLAIMS, RSA, kid=""), NOW, None),
    ("alg differs from the key's", sign(CLAIMS, KEYS["ES256"], "ES256"), NOW, jwt.VERIFICATION),
]


@pytest.mark.parametrize(("token", "now", "expected"), [c[1:] for c in FAILURES], ids=[c[0] for c in FAILURES])
def test_token_checks(token: str, now: float, expected: jwt.Failure | None) -> None:
    assert check(token, RSA_KEYS, now) == expected


def test_key_alg_must_match_token_alg() -> None:
    keys = jwt.parse_jwks(jwks_text(jwk(RSA, alg="RS512")))
    assert check(sign(CLAIMS, RSA, "RS256"), keys) == jwt.KID_ALG_MISMATCH
    assert check(sign(CLAIMS, RSA, "RS512"), keys) is None


@pytest.mark.parametrize(
    ("aud", "allowed", "ok"),
    [
        ("svc", {"svc"}, True),
        (["x", "svc"], {"svc"}, True),
        ("https://svc.example/", {"svc.example"}, True),  # check_audience.cc: scheme and trailing "/" ignored
        ("other", {"svc"}, False),
        (None, {"svc"}, False),
        ("anything", set(), True),
    ],
)
def test_audiences(aud: Any, allowed: set[str], ok: bool) -> None:
    claims = {k: v for k, v in {**CLAIMS, "aud": aud}.items() if v is not None}
    result = check(sign(claims, RSA), RSA_KEYS, audiences=frozenset(map(jwt.normalize_audience, allowed)))
    assert result == (None if ok else jwt.AUDIENCE)
    assert jwt.AUDIENCE.status == 403


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "Jwks is an invalid JSON"),
        ("{}", "Jwks does not have [keys] field"),
        ('{"keys": {}}', "[keys] in Jwks is not an array"),
        ('{"keys": [{"kty": "XYZ"}]}', "Jwks doesn't have any valid public key"),
        ('{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}',
         "Jwks RSA [n] or [e] field is missing or has a parse error"),
        ('{"keys": [{"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA"}]}',
         "[crv] or [alg] field is not supported for an EC key"),
    ],
)
def test_jwks_errors(text: str, message: str) -> None:
    with pytest.raises(jwt.JwksError, match=message.replace("[", r"\[").replace("]", r"\]")):
        jwt.parse_jwks(text)


def test_jwks_skips_unusable_keys_and_reads_pem() -> None:
    mixed = jwks_text({"kty": "XYZ"}, {**jwk(RSA), "use": "enc"}, jwk(RSA, kid="sig"))
    assert [k.kid for k in jwt.parse_jwks(mixed).keys] == ["sig"]
    pem = RSA.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    assert check(sign(CLAIMS, RSA, kid=""), jwt.parse_jwks(pem)) is None


# ---- the authenticator: istiod's requirement (provider OR allow_missing), locations, output ----

def authenticator(*rules: JwtRule, keys: jwt.Jwks | None = RSA_KEYS) -> JwtAuthenticator:
    return JwtAuthenticator(sorted(rules, key=lambda r: r.issuer), lambda rule: keys)


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def test_missing_token_passes_without_claims_and_invalid_fails() -> None:
    auth = authenticator(JwtRule(ISS))
    assert auth.authenticate([(b"authorization", b"Basic eDp5")], "/", NOW).claims is None
    assert auth.authenticate([], "/", NOW).failure is None
    assert auth.authenticate(bearer("garbage"), "/", NOW).failure == jwt.BAD_FORMAT


def test_valid_token_gives_claims_and_is_removed() -> None:
    out = authenticator(JwtRule(ISS)).authenticate(bearer(sign(CLAIMS, RSA)), "/", NOW)
    assert out.failure is None and out.claims is not None and out.claims["sub"] == "alice"
    assert out.remove == {b"authorization"}
    keep = authenticator(JwtRule(ISS, forward_original_token=True))
    forwarded = keep.authenticate(bearer(sign(CLAIMS, RSA)), "/", NOW)
    assert forwarded.remove == frozenset()


def test_issuer_not_configured_and_issuer_per_location() -> None:
    other = sign({**CLAIMS, "iss": "https://other"}, RSA)
    assert authenticator(JwtRule(ISS)).authenticate(bearer(other), "/", NOW).failure == jwt.UNKNOWN_ISSUER
    # "https://other" is configured, but only for x-other: a token of it in Authorization is refused
    two = authenticator(JwtRule(ISS), JwtRule("https://other", from_headers=(("x-other", ""),)))
    assert two.authenticate(bearer(other), "/", NOW).failure == jwt.UNKNOWN_ISSUER
    assert two.authenticate([(b"x-other", other.encode())], "/", NOW).claims is not None
    assert two.authenticate(bearer(sign(CLAIMS, RSA)), "/", NOW).claims is not None


def test_no_keys_fails_closed() -> None:
    assert authenticator(JwtRule(ISS), keys=None).authenticate(bearer(sign(CLAIMS, RSA)), "/", NOW).failure == (
        jwt.VERIFICATION
    )


def test_locations_param_cookie_prefix() -> None:
    token = sign(CLAIMS, RSA)
    default = authenticator(JwtRule(ISS))
    out = default.authenticate([], f"/p?a=1&access_token={token}&b=2", NOW)
    assert out.claims is not None and out.path == "/p?a=1&b=2"
    custom = authenticator(JwtRule(ISS, from_headers=(("x-jwt", "Token "),), from_params=("t",), from_cookies=("c",)))
    assert custom.authenticate([(b"x-jwt", f"Token   {token}".encode())], "/", NOW).claims is not None
    assert custom.authenticate([(b"x-jwt", token.encode())], "/", NOW).claims is None  # prefix absent: no token
    assert custom.authenticate([(b"cookie", f"a=b; c={token}".encode())], "/", NOW).claims is not None
    assert custom.authenticate(bearer(token), "/", NOW).claims is None  # Authorization is not a location here


def test_every_token_must_verify() -> None:
    good, bad = sign(CLAIMS, RSA), sign(CLAIMS, OTHER_RSA)
    auth = authenticator(JwtRule(ISS))
    assert auth.authenticate(bearer(good), f"/?access_token={bad}", NOW).failure == jwt.VERIFICATION


def test_outputs_are_sanitized_then_set() -> None:
    rule = JwtRule(ISS, output_payload_to_header="x-jwt-payload", output_claim_to_headers=(("x-sub", "sub"),
                   ("x-n", "n"), ("x-flag", "f"), ("x-deep", "a.b"), ("x-list", "l")))
    auth = authenticator(rule)
    token = sign({**CLAIMS, "n": 7, "f": True, "a": {"b": "c"}, "l": ["x"]}, RSA)
    out = auth.authenticate([*bearer(token), (b"x-sub", b"forged")], "/", NOW)
    assert {b"x-sub", b"x-jwt-payload", b"authorization"} <= out.remove
    assert dict(out.add) == {b"x-jwt-payload": token.split(".")[1].encode(), b"x-sub": b"alice", b"x-n": b"7",
                             b"x-flag": b"true", b"x-deep": b"c"}
    assert auth.authenticate([(b"x-sub", b"forged")], "/", NOW).remove == auth.sanitize  # no token: still stripped


def test_space_delimited_claims_become_lists_and_cache_rechecks_time() -> None:
    auth = authenticator(JwtRule(ISS))
    token = sign({**CLAIMS, "scope": "read write", "other": "a b"}, RSA)
    first = auth.authenticate(bearer(token), "/", NOW)
    assert first.claims is not None and first.claims["scope"] == ["read", "write"] and first.claims["other"] == "a b"
    assert auth.authenticate(bearer(token), "/", NOW).claims is first.claims  # verified once, then cached
    assert auth.authenticate(bearer(token), "/", NOW + 3600).failure == jwt.EXPIRED
