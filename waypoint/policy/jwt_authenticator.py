"""What Envoy's ``jwt_authn`` filter does with istiod's RequestAuthentication config, sans-I/O.

istiod makes one provider per ``jwtRule`` and one requirement for all of them
(``IS:pilot/pkg/security/authn/policy_applier.go`` ``convertToEnvoyJwtConfig``): each provider
*or* ``allow_missing``, so

- a request with no token in any configured location goes on, unauthenticated (AuthorizationPolicy
  decides, typically with ``requestPrincipals: ["*"]``);
- a token that fails is refused: 401 with the failure as body (403 for a disallowed audience);
- a valid token's payload is what RBAC reads (``request.auth.*``), its claims copied to headers
  (``outputClaimToHeaders``), its payload to ``outputPayloadToHeader``, and the token removed from
  the request unless ``forwardOriginalToken`` (Envoy ``forward: false`` by default).

Locations (``jwt_authn/extractor.cc``): a rule without ``fromHeaders``/``fromParams``/``fromCookies``
reads ``Authorization: Bearer <token>`` and the ``access_token`` query parameter; a location knows the
issuers that named it, and a token found there with another issuer is "Jwt issuer is not configured".
The output headers are always removed from the incoming request first, so a client cannot forge them
(``sanitizePayloadHeaders``).

One deliberate simplification: when a request carries several tokens, every one must verify (Envoy
with ``allow_missing`` lets the last one decide; requiring all is the safer reading of its own comment
"all tokens must be verified successfully").

Cost: a request without any configured location pays one scan of its headers. A token is parsed and
its signature checked once; the verified token is then cached by its text (Envoy's ``jwt_cache``),
and later requests with it pay a dict lookup plus the time and audience checks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from waypoint.policy.jwt import (
    AUDIENCE,
    UNKNOWN_ISSUER,
    VERIFICATION,
    Failure,
    Jwks,
    Token,
    audience_allowed,
    check_time,
    claim_value,
    normalize_audience,
    parse_token,
    verify_signature,
)
from waypoint.policy.request_authn import JwtRule, KeySource

log = logging.getLogger(__name__)

_BEARER = "Bearer "
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_CACHE_SIZE = 256  # verified tokens kept per authenticator (Envoy's jwt_cache default is 100)

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict and the request edits it implies (the filter applies them).

    ``claims`` is the verified payload as RBAC reads it (space-delimited claims split into lists);
    ``remove`` are header names to drop, then ``add`` is appended; ``path`` replaces the request
    path when a token is removed from the query."""

    failure: Failure | None = None
    claims: Mapping[str, Any] | None = None
    remove: frozenset[bytes] = frozenset()
    add: tuple[tuple[bytes, bytes], ...] = ()
    path: str | None = None


@dataclass(frozen=True, slots=True)
class _Provider:
    rule: JwtRule
    audiences: frozenset[str]


@dataclass(slots=True)
class _Found:
    token: str
    issuers: frozenset[str] | None  # None: any issuer may use this location (a rule without issuer)
    header: bytes = b""  # the header it came from, or
    param: str = ""  # the query parameter


@dataclass(frozen=True, slots=True)
class _Verified:
    token: Token
    keys: Jwks
    claims: Mapping[str, Any] = field(default_factory=dict)


class JwtAuthenticator:
    """The rules that apply to one target (sorted by issuer), compiled once per snapshot."""

    def __init__(self, rules: Sequence[JwtRule], keys: KeySource) -> None:
        self._keys = keys
        self._providers: dict[str, _Provider] = {}
        for rule in rules:  # the first rule of an issuer wins (istio/istio#19245: duplicates are not merged)
            self._providers.setdefault(rule.issuer, _Provider(rule, frozenset(map(normalize_audience, rule.audiences))))
        headers: dict[tuple[bytes, str], set[str]] = {}
        params: dict[str, set[str]] = {}
        cookies: dict[str, set[str]] = {}
        sanitize: set[bytes] = set()
        for rule in rules:
            if not (rule.from_headers or rule.from_params or rule.from_cookies):
                headers.setdefault((b"authorization", _BEARER), set()).add(rule.issuer)
                params.setdefault("access_token", set()).add(rule.issuer)
            for name, prefix in rule.from_headers:
                headers.setdefault((name.encode("latin-1"), prefix), set()).add(rule.issuer)
            for name in rule.from_params:
                params.setdefault(name, set()).add(rule.issuer)
            for name in rule.from_cookies:
                cookies.setdefault(name, set()).add(rule.issuer)
            if rule.output_payload_to_header:
                sanitize.add(rule.output_payload_to_header.encode("latin-1"))
            sanitize.update(h.encode("latin-1") for h, _ in rule.output_claim_to_headers)
        self._headers = {k: _issuers(v) for k, v in headers.items()}
        self._header_names = frozenset(name for name, _ in self._headers)
        self._params = {k: _issuers(v) for k, v in params.items()}
        self._param_marks = tuple(f"{quote(k, safe='')}=" for k in params)
        self._cookies = {k: _issuers(v) for k, v in cookies.items()}
        self.sanitize = frozenset(sanitize)
        self._cache: dict[str, _Verified] = {}

    def authenticate(self, headers: Headers, path: str, now: float) -> Outcome:
        found = self._extract(headers, path)
        if not found:
            return Outcome(remove=self.sanitize) if self.sanitize else _MISSING
        verified: list[tuple[_Found, _Provider, _Verified]] = []
        for item in found:
            result = self._verify(item, now)
            if isinstance(result, Failure):
                return Outcome(failure=result)
            verified.append((item, *result))
        return self._accept(verified, path)

    # ---- extraction (extractor.cc) ----
    def _extract(self, headers: Headers, path: str) -> list[_Found]:
        found: list[_Found] = []
        names = self._header_names
        for name, raw in headers:
            if name in names:
                value = raw.decode("latin-1")
                for (hname, prefix), issuers in self._headers.items():
                    if hname == name:
                        token = _after_prefix(value, prefix)
                        if token is not None:
                            found.append(_Found(token, issuers, header=name))
            elif name == b"cookie" and self._cookies:
                found.extend(self._from_cookies(raw.decode("latin-1")))
        if self._params and "?" in path and any(p in path for p in self._param_marks):  # most queries: no parse
            query = dict(reversed(parse_qsl(urlsplit(path).query, keep_blank_values=True)))  # first value wins
            for param, issuers in self._params.items():
                if param in query:
                    found.append(_Found(query[param], issuers, param=param))
        return found

    def _from_cookies(self, text: str) -> Iterable[_Found]:
        for part in text.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name in self._cookies:
                yield _Found(value.strip('"'), self._cookies[name])

    # ---- verification (authenticator.cc startVerify) ----
    def _verify(self, item: _Found, now: float) -> tuple[_Provider, _Verified] | Failure:
        hit = self._cache.get(item.token)
        token = hit.token if hit is not None else parse_token(item.token)
        if isinstance(token, Failure):
            return token
        # a rule without issuer takes tokens of any issuer no other rule names (authenticator.cc findByIssuer)
        provider = self._providers.get(token.iss) or self._providers.get("")
        if provider is None or (item.issuers is not None and token.iss not in item.issuers):
            return UNKNOWN_ISSUER
        failure = check_time(token, now)
        if failure is not None:
            return failure
        if not audience_allowed(token, provider.audiences):
            return AUDIENCE
        keys = self._keys(provider.rule)
        if keys is None:  # no keys yet (jwksUri not fetched): Istio's fake JWKS makes this fail too
            return VERIFICATION
        if hit is not None and hit.keys is keys:
            return provider, hit
        failure = verify_signature(token, keys)
        if failure is not None:
            return failure
        verified = _Verified(token, keys, _normalized(token.payload, provider.rule.space_delimited_claims))
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[item.token] = verified
        return provider, verified

    def _accept(self, verified: list[tuple[_Found, _Provider, _Verified]], path: str) -> Outcome:
        """authenticator.cc ``handleGoodJwt``: payload header, claim headers, token removal."""
        add: list[tuple[bytes, bytes]] = []
        remove = set(self.sanitize)
        drop_params: set[str] = set()
        for item, provider, v in verified:
            rule = provider.rule
            if rule.output_payload_to_header:
                add.append((rule.output_payload_to_header.encode("latin-1"), v.token.payload_b64.encode("ascii")))
            for header, claim in rule.output_claim_to_headers:
                text = _claim_text(claim_value(v.token.payload, claim.split(".")))
                if text:
                    add.append((header.encode("latin-1"), text.encode("utf-8")))
            if not rule.forward_original_token:
                if item.header:
                    remove.add(item.header)
                elif item.param:
                    drop_params.add(item.param)
        return Outcome(
            claims=verified[-1][2].claims,
            remove=frozenset(remove),
            add=tuple(add),
            path=_without_params(path, drop_params) if drop_params else None,
        )


_MISSING = Outcome()


def _issuers(issuers: set[str]) -> frozenset[str] | None:
    return None if "" in issuers else frozenset(issuers)


def _after_prefix(value: str, prefix: str) -> str | None:
    """extractor.cc: the prefix anywhere in the value, then the token from its first base64url character."""
    if not prefix:
        return value
    pos = value.find(prefix)
    if pos < 0:
        return None
    rest = value[pos + len(prefix) :]
    for i, ch in enumerate(rest):
        if ch in _TOKEN_CHARS:
            return rest[i:]
    return rest


def _normalized(payload: Mapping[str, Any], space_delimited: Iterable[str]) -> Mapping[str, Any]:
    """Envoy's ``normalize_payload_in_metadata``: listed claims given as one space-separated string
    become lists, so ``request.auth.claims[scope]`` matches one scope."""
    changed = {
        name: payload[name].split() for name in space_delimited if isinstance(payload.get(name), str)
    }
    return {**payload, **changed} if changed else payload


def _claim_text(value: Any) -> str:
    """authenticator.cc ``addJWTClaimToHeader``: strings, integers, doubles and booleans only."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and value >= 0 else f"{value:f}"
    return ""


def _without_params(path: str, names: set[str]) -> str:
    """The path with the token's query parameters removed (Envoy ``JwtParamLocation::removeJwt``)."""
    base, _, query = path.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in names]
    if not kept:
        return base
    return base + "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in kept)
