"""Value matchers: strings (exact, ``abc*``, ``*abc``, ``*``), IP blocks, ports, paths.

All compiled once per snapshot; ``matches`` does no parsing and no regex compile.
String forms follow ``IS:pilot/pkg/security/authz/matcher/string.go`` ``StringMatcher`` and
ztunnel's ``StringMatch`` (``ZT:src/rbac.rs``): a leading ``*`` is a suffix match, a trailing
``*`` a prefix match, ``*`` alone is presence (any non-empty value), anything else exact.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Envoy's URI template operators (``envoy/extensions/path/match/uri_template``):
# "{*}" one path segment, "{**}" zero or more characters including "/".
_PCHAR = r"a-zA-Z0-9\-._~%!$&'()+,;:@="
_ONE_SEGMENT = f"[{_PCHAR}]+"
_MANY_SEGMENTS = f"[{_PCHAR}/]*"
_TEMPLATE_OPERATOR = re.compile(r"\{\*\*\}|\{\*\}")


class StringMatch:
    """One policy value. ``ignore_case`` is for hosts ("The match is case-insensitive", API
    reference ``Operation.hosts``; ``matcher/header.go`` ``HostMatcher``)."""

    __slots__ = ("ignore_case", "kind", "value")

    def __init__(self, pattern: str, *, ignore_case: bool = False) -> None:
        self.ignore_case = ignore_case
        if ignore_case:
            pattern = pattern.lower()
        if pattern == "*":
            self.kind, self.value = "presence", ""
        elif pattern.startswith("*"):
            self.kind, self.value = "suffix", pattern[1:]
        elif pattern.endswith("*"):
            self.kind, self.value = "prefix", pattern[:-1]
        else:
            self.kind, self.value = "exact", pattern

    def matches(self, text: str) -> bool:
        """``text`` is already lower-cased by the caller when ``ignore_case``."""
        kind = self.kind
        if kind == "exact":
            return text == self.value
        if kind == "prefix":
            return text.startswith(self.value)
        if kind == "suffix":
            return text.endswith(self.value)
        return bool(text)

    def __repr__(self) -> str:
        return f"StringMatch({self.kind}:{self.value!r})"


def string_matches(patterns: Iterable[str], *, ignore_case: bool = False) -> tuple[StringMatch, ...]:
    return tuple(StringMatch(p, ignore_case=ignore_case) for p in patterns)


def any_match(matchers: tuple[StringMatch, ...], text: str | None) -> bool:
    """OR over values; an absent attribute (``None``) matches nothing, not even presence."""
    if text is None:
        return False
    return any(m.matches(text) for m in matchers)


def ip_block(text: str) -> IPNetwork:
    """A validated single IP or CIDR; host bits may be set (Go's ``netip.ParsePrefix``)."""
    if "/" in text:
        return ipaddress.ip_network(text, strict=False)
    return ipaddress.ip_network(ipaddress.ip_address(text))


def ip_blocks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ip_block(t) for t in texts)


def ip_in(blocks: tuple[IPNetwork, ...], ip: str) -> bool:
    """``ip`` as the proxy reports it; an unparsable one (never from a socket) matches nothing."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr.version == block.version and addr in block for block in blocks)


class PathMatch:
    """A ``paths`` value, matched against the path without its query string, as Envoy's
    ``url_path`` matcher does (``matcher/header.go`` ``PathMatcher``). Values with ``{*}`` or
    ``{**}`` are URI templates (``generator.go`` ``pathGenerator``; API reference "paths")."""

    __slots__ = ("_string", "_template")

    def __init__(self, pattern: str) -> None:
        self._template: re.Pattern[str] | None = None
        self._string: StringMatch | None = None
        if "{*}" in pattern or "{**}" in pattern:
            parts: list[str] = []
            pos = 0
            for op in _TEMPLATE_OPERATOR.finditer(pattern):
                parts.append(re.escape(pattern[pos : op.start()]))
                parts.append(_MANY_SEGMENTS if op.group() == "{**}" else _ONE_SEGMENT)
                pos = op.end()
            parts.append(re.escape(pattern[pos:]))
            self._template = re.compile("".join(parts))
        else:
            self._string = StringMatch(pattern)

    def matches(self, path: str) -> bool:
        if self._template is not None:
            return self._template.fullmatch(path) is not None
        assert self._string is not None
        return self._string.matches(path)


def url_path(path: str) -> str:
    """The path Envoy's ``url_path`` matcher sees: without ``?query`` and ``#fragment``."""
    cut = len(path)
    for sep in ("?", "#"):
        i = path.find(sep)
        if 0 <= i < cut:
            cut = i
    return path[:cut] if cut != len(path) else path
