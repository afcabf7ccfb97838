"""JSON Web Tokens, sans-I/O: token text in, a parsed :class:`Token` or the :class:`Failure` Envoy's
``jwt_authn`` filter reports; JWKS text in, :class:`Jwks` out; signatures checked with ``cryptography``.

The checks and their order are Envoy's (``source/extensions/filters/http/jwt_authn/authenticator.cc``
``startVerify``): parse, issuer, time (``exp``/``nbf`` with 60 s of clock skew,
``jwt_verify_lib`` ``kClockSkewInSecond``), audience, keys, signature. Each failure carries the text
``jwt_verify_lib`` gives it (``src/status.cc`` ``getStatusString``), which Envoy sends as the body of
the local reply, and the status: 401, except a disallowed audience, 403
(``jwt_authn/filter.cc`` ``onComplete``).

Key selection follows ``jwt_verify_lib`` ``verify.cc``: a key whose ``kid`` differs from the
token's, or whose ``alg`` differs, is skipped; no key left is "Jwks doesn't have key to match kid
or alg from Jwt", a key left that does not verify is "Jwt verification fails".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

CLOCK_SKEW_S = 60  # jwt_verify_lib kClockSkewInSecond (Envoy's default; Istio sets none)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a token was refused: ``message`` is the reply body, ``status`` the HTTP status."""

    message: str
    status: int = 401


BAD_FORMAT = Failure("Jwt is not in the form of Header.Payload.Signature")
HEADER_PARSE = Failure("Jwt header is an invalid Base64url input or an invalid JSON")
BAD_ALG = Failure("Jwt header [alg] field is not a string")
ALG_NOT_IMPLEMENTED = Failure("Jwt header [alg] field value is invalid")
BAD_KID = Failure("Jwt header [kid] field is not a string")
PAYLOAD_PARSE = Failure("Jwt payload is an invalid Base64 or an invalid JSON")
SIGNATURE_PARSE = Failure("Jwt signature is an invalid Base64")
UNKNOWN_ISSUER = Failure("Jwt issuer is not configured")
NOT_YET_VALID = Failure("Jwt not yet valid")
EXPIRED = Failure("Jwt is expired")
AUDIENCE = Failure("Audiences in Jwt are not allowed", 403)
VERIFICATION = Failure("Jwt verification fails")
KID_ALG_MISMATCH = Failure("Jwks doesn't have key to match kid or alg from Jwt")
NO_VALID_KEYS = Failure("Jwks doesn't have any valid public key")

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256", "HS384", "HS512"}
    | {"EdDSA"}
)


class JwksError(ValueError):
    """A key set that cannot be used; the message is ``jwt_verify_lib``'s."""


@dataclass(frozen=True, slots=True)
class Token:
    """A parsed (not yet verified) token. ``payload_b64`` is the payload as sent (for
    ``outputPayloadToHeader``); ``audiences`` is ``aud`` as a tuple whatever its JSON form."""

    alg: str
    kid: str
    payload: Mapping[str, Any]
    signing_input: bytes
    signature: bytes
    payload_b64: str
    iss: str
    audiences: tuple[str, ...]
    exp: int
    nbf: int


def b64url(text: str) -> bytes:
    """Base64url with or without padding; raises ``ValueError`` on any other character."""
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except binascii.Error as e:
        raise ValueError(str(e)) from None


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(b64url(text))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_token(text: str) -> Token | Failure:
    """``jwt_verify_lib`` ``Jwt::parseFromString``: three base64url parts, JSON header and payload,
    typed registered claims."""
    parts = text.split(".")
    if len(parts) != 3:
        return BAD_FORMAT
    header = _json_object(parts[0])
    if header is None:
        return HEADER_PARSE
    alg = header.get("alg")
    if not isinstance(alg, str):
        return BAD_ALG
    if alg not in ALGORITHMS:
        return ALG_NOT_IMPLEMENTED
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        return BAD_KID
    payload = _json_object(parts[1])
    if payload is None:
        return PAYLOAD_PARSE
    registered = _registered_claims(payload)
    if registered is None:
        return PAYLOAD_PARSE
    try:
        signature = b64url(parts[2])
    except ValueError:
        return SIGNATURE_PARSE
    iss, audiences, exp, nbf = registered
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
    return Token(alg, kid, payload, signing_input, signature, parts[1], iss, audiences, exp, nbf)


def _registered_claims(payload: Mapping[str, Any]) -> tuple[str, tuple[str, ...], int, int] | None:
    """``iss``/``sub`` strings, ``aud`` a string or list of strings, ``exp``/``nbf``/``iat`` numbers."""
    iss, sub, aud = payload.get("iss", ""), payload.get("sub", ""), payload.get("aud")
    if not isinstance(iss, str) or not isinstance(sub, str):
        return None
    if aud is None:
        audiences: tuple[str, ...] = ()
    elif isinstance(aud, str):
        audiences = (aud,)
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        audiences = tuple(aud)
    else:
        return None
    times = []
    for name in ("exp", "nbf", "iat"):
        value = payload.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        times.append(int(value))
    return iss, audiences, times[0], times[1]


def check_time(token: Token, now: float, skew_s: int = CLOCK_SKEW_S) -> Failure | None:
    """``Jwt::verifyTimeConstraint``: not before ``nbf - skew``, not after ``exp + skew``."""
    if token.nbf and token.nbf > now + skew_s:
        return NOT_YET_VALID
    if token.exp and now > token.exp + skew_s:
        return EXPIRED
    return None


def normalize_audience(aud: str) -> str:
    """``jwt_verify_lib`` ``check_audience.cc``: scheme and trailing slash do not count."""
    for scheme in ("http://", "https://"):
        if aud.startswith(scheme):
            aud = aud[len(scheme) :]
            break
    return aud.rstrip("/")


def audience_allowed(token: Token, allowed: frozenset[str]) -> bool:
    """``allowed`` normalized; empty allows any token (the rule lists no audiences)."""
    return not allowed or any(normalize_audience(a) in allowed for a in token.audiences)


@dataclass(frozen=True, slots=True)
class Jwk:
    """One usable public key (``key``: a ``cryptography`` public key, or bytes for ``oct``)."""

    kty: str
    kid: str
    alg: str
    key: Any
    crv: str = ""


@dataclass(frozen=True, slots=True)
class Jwks:
    keys: tuple[Jwk, ...]


def parse_jwks(text: str) -> Jwks:
    """A JSON Web Key Set (RFC 7517), or a PEM public key (``jwt_verify_lib`` takes both).
    Keys of kinds we cannot use, or marked ``use: enc``, are skipped; raises :class:`JwksError`."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped.encode())
        except ValueError:
            raise JwksError("Jwks PEM public key parse error") from None
        return Jwks((_pem_jwk(key),))
    try:
        doc = json.loads(stripped)
    except ValueError:
        raise JwksError("Jwks is an invalid JSON") from None
    if not isinstance(doc, dict) or "keys" not in doc:
        raise JwksError("Jwks does not have [keys] field")
    if not isinstance(doc["keys"], list):
        raise JwksError("[keys] in Jwks is not an array")
    keys = [k for k in (_jwk(raw) for raw in doc["keys"]) if k is not None]
    if not keys:
        raise JwksError(NO_VALID_KEYS.message)
    return Jwks(tuple(keys))


def _pem_jwk(key: Any) -> Jwk:
    if isinstance(key, rsa.RSAPublicKey):
        return Jwk("RSA", "", "", key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name, "")
        return Jwk("EC", "", "", key, crv)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return Jwk("OKP", "", "EdDSA", key)
    raise JwksError("Jwks PEM public key parse error")


def _string(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name, "")
    if not isinstance(value, str):
        raise JwksError(f"[{name}] field is not string in [keys]")
    return value


def _b64_int(raw: Mapping[str, Any], name: str, error: str) -> int:
    try:
        return int.from_bytes(b64url(_string(raw, name)), "big")
    except ValueError:
        raise JwksError(error) from None


def _jwk(raw: Any) -> Jwk | None:
    if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
        return None
    kty, kid, alg = _string(raw, "kty"), _string(raw, "kid"), _string(raw, "alg")
    if kty == "RSA":
        n = _b64_int(raw, "n", "Jwks RSA [n] or [e] field is missing or has a parse error")
        e = _b64_int(raw, "e", "Jwks RSA [n] or [e] field is missing or has a parse error")
        try:
            return Jwk(kty, kid, alg, rsa.RSAPublicNumbers(e, n).public_key())
        except ValueError:
            raise JwksError("Jwks RSA [n] or [e] field is missing or has a parse error") from None
    if kty == "EC":
        crv = _string(raw, "crv")
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}.get(crv)
        if curve is None:
            raise JwksError("[crv] or [alg] field is not supported for an EC key")
        x = _b64_int(raw, "x", "Jwks EC [x] or [y] field is an invalid Base64.")
        y = _b64_int(raw, "y", "Jwks EC [x] or [y] field is an invalid Base64.")
        try:
            return Jwk(kty, kid, alg, ec.EllipticCurvePublicNumbers(x, y, curve).public_key(), crv)
        except ValueError:
            raise JwksError("Jwks EC [x] and [y] fields have a parse error.") from None
    if kty == "OKP":
        crv = _string(raw, "crv")
        try:
            public = b64url(_string(raw, "x"))
            if crv == "Ed25519":
                return Jwk(kty, kid, alg, ed25519.Ed25519PublicKey.from_public_bytes(public), crv)
            if crv == "Ed448":
                return Jwk(kty, kid, alg, ed448.Ed448PublicKey.from_public_bytes(public), crv)
        except ValueError:
            raise JwksError("[x] field is invalid for an OKP key") from None
        return None
    if kty == "oct":
        try:
            return Jwk(kty, kid, alg, b64url(_string(raw, "k")))
        except ValueError:
            raise JwksError("Jwks Oct key is an invalid Base64") from None
    return None  # "[kty] is not supported in [keys]": skipped, the others still serve


def verify_signature(token: Token, jwks: Jwks) -> Failure | None:
    """Try every key that fits the token's ``kid`` and ``alg`` (``jwt_verify_lib`` ``verifyJwt``)."""
    matched = False
    for jwk in jwks.keys:
        if token.kid and jwk.kid and jwk.kid != token.kid:
            continue
        if jwk.alg and jwk.alg != token.alg:
            continue
        matched = True
        if _verify_with(jwk, token):
            return None
    return VERIFICATION if matched else KID_ALG_MISMATCH


def _verify_with(jwk: Jwk, token: Token) -> bool:
    alg, data, sig = token.alg, token.signing_input, token.signature
    family, bits = alg[:2], alg[2:]
    try:
        if jwk.kty == "RSA" and family == "RS":
            jwk.key.verify(sig, data, padding.PKCS1v15(), _HASHES[bits]())
        elif jwk.kty == "RSA" and family == "PS":
            digest = _HASHES[bits]()
            jwk.key.verify(sig, data, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
        elif jwk.kty == "EC" and family == "ES" and _CURVES[alg] == jwk.crv:
            jwk.key.verify(_der(sig, (jwk.key.curve.key_size + 7) // 8), data, ec.ECDSA(_HASHES[bits]()))
        elif jwk.kty == "OKP" and alg == "EdDSA":
            jwk.key.verify(sig, data)
        elif jwk.kty == "oct" and family == "HS":
            expected = hmac.new(jwk.key, data, getattr(hashlib, f"sha{bits}")).digest()
            return hmac.compare_digest(expected, sig)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _der(raw: bytes, size: int) -> bytes:
    """JWS ECDSA signatures are ``r || s`` (RFC 7518 §3.4); ``cryptography`` wants DER."""
    if len(raw) != 2 * size:
        raise ValueError("bad ECDSA signature length")
    return encode_dss_signature(int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big"))


def claim_value(payload: Mapping[str, Any], path: Sequence[str]) -> Any:
    """A claim by its path of nested names (``request.auth.claims[a][b]``); None when absent."""
    value: Any = payload
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value
