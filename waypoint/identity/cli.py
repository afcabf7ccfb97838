"""``waypoint ca``: make a development CA and issue workload certificates from it.

    waypoint ca init  --dir DIR [--trust-domain TD] [--force]
    waypoint ca issue --dir CA_DIR (--spiffe URI | --namespace NS --service-account SA)
                      --out DIR [--lifetime 24h]

``issue`` writes Istio's mounted layout (``cert-chain.pem``, ``key.pem``, ``root-cert.pem``),
which :class:`~waypoint.identity.certs.FileCertificateSource` and the roles read.
Exit codes: 0 done, 1 the CA could not be read or would be overwritten, 2 usage or
invalid identity.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from typing import Any

from waypoint.identity.ca import CAError, DevCA
from waypoint.identity.certs import DEFAULT_LEAF_LIFETIME
from waypoint.identity.spiffe import DEFAULT_TRUST_DOMAIN, Identity, InvalidIdentity

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_DURATION_PART = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``24h``, ``90m``, ``1h30m``, ``7d``, ``45s``: a positive duration, or ValueError."""
    pos, total = 0, timedelta(0)
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        pos = match.end()
    if pos != len(text) or not text or total <= timedelta(0):
        raise ValueError(f"invalid duration {text!r} (use e.g. 24h, 90m, 1h30m)")
    return total


def add_parser(subparsers: Any) -> None:
    """Register ``waypoint ca`` and its two actions."""
    parser = subparsers.add_parser("ca", help="development CA: init, issue workload certificates")
    actions = parser.add_subparsers(dest="ca_action", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="create a root CA in DIR")
    init.add_argument("--dir", required=True, help="directory for root-cert.pem and root-key.pem")
    init.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    init.add_argument("--force", action="store_true", help="overwrite an existing CA")
    init.set_defaults(func=_init)

    issue = actions.add_parser("issue", help="issue a workload certificate in Istio's file layout")
    issue.add_argument("--dir", required=True, help="the CA directory made by `waypoint ca init`")
    issue.add_argument("--spiffe", help="spiffe://<td>/ns/<ns>/sa/<sa>")
    issue.add_argument("--namespace", help="with --service-account, instead of --spiffe")
    issue.add_argument("--service-account")
    issue.add_argument("--out", required=True, help="directory for cert-chain.pem, key.pem, root-cert.pem")
    issue.add_argument("--lifetime", default="24h", help="e.g. 24h (the default, as istiod), 1h30m")
    issue.set_defaults(func=_issue)


def _init(args: argparse.Namespace) -> int:
    if DevCA.exists(args.dir) and not args.force:
        print(f"waypoint ca init: a CA already exists in {args.dir} (use --force)", file=sys.stderr)
        return EXIT_FAILED
    try:
        Identity(args.trust_domain, "x", "x")  # validates the trust domain's shape
    except InvalidIdentity as exc:
        print(f"waypoint ca init: invalid trust domain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ca = DevCA.create(args.trust_domain)
    for path in ca.save(args.dir):
        print(f"wrote {path}")
    print(f"trust domain {ca.trust_domain}")
    return EXIT_OK


def _requested_identity(args: argparse.Namespace, trust_domain: str) -> Identity:
    if args.spiffe is not None:
        if args.namespace is not None or args.service_account is not None:
            raise InvalidIdentity("give either --spiffe or --namespace/--service-account, not both")
        return Identity.parse(args.spiffe)
    if args.namespace is None or args.service_account is None:
        raise InvalidIdentity("give --spiffe, or both --namespace and --service-account")
    return Identity(trust_domain, args.namespace, args.service_account)


def _issue(args: argparse.Namespace) -> int:
    try:
        ca = DevCA.load(args.dir)
    except CAError as exc:
        print(f"waypoint ca issue: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        identity = _requested_identity(args, ca.trust_domain)
        lifetime = parse_duration(args.lifetime) if args.lifetime else DEFAULT_LEAF_LIFETIME
    except ValueError as exc:  # InvalidIdentity is a ValueError
        print(f"waypoint ca issue: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if identity.trust_domain != ca.trust_domain:
        print(
            f"waypoint ca issue: {identity} is not in the CA's trust domain {ca.trust_domain}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    cert = ca.issue(identity, lifetime=lifetime)
    for path in cert.write_istio_layout(args.out):
        print(f"wrote {path}")
    print(f"identity {identity} valid until {cert.not_after.isoformat()}")
    return EXIT_OK
