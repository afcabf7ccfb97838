"""A small but real Kubernetes API server for tests: HTTPS, bearer token or client certificate,
LIST (paged) and streaming WATCH for any resource path, from an in-memory store.

It stands in for kube-apiserver, not for any part of ours, and follows its wire behaviour
(Kubernetes API concepts, "Efficient detection of changes"): every write bumps one global
resourceVersion; a watch from version N replays what happened after N, then streams live events
as newline-delimited JSON in a chunked response; a watch from a compacted version gets one ERROR
event with a 410 ``Status`` ("too old resource version") and ends; a watch with ``resourceVersion``
"" or "0" starts with a synthetic ADDED for every object. Tests drive it in-process: ``put`` and
``delete`` objects, ``compact`` the history, ``close_watches`` (clean end) or ``break_watches``
(connections dropped), ``missing`` resource paths (404, as a CRD not installed).

Writes, for ``waypoint controller``: server-side apply (``PATCH`` with ``application/apply-patch+yaml``
and a required ``fieldManager``; Kubernetes docs, "Server-Side Apply") of an object or of its
``status`` subresource, and ``DELETE``. Apply is simplified: the patch is merged into what is stored
(maps merged, lists replaced; a patch to the object leaves ``status`` alone, a patch to ``/status``
changes only ``status``), ``metadata.generation`` moves when ``spec`` changes, and an apply that
changes nothing writes nothing (no new resourceVersion, no event), as the real server. Field
ownership and conflicts are not modelled. For leader election: ``GET`` of one namespaced object,
``POST`` to a namespaced collection (409 AlreadyExists) and ``PUT`` of an object, conditional on the
``metadata.resourceVersion`` it carries (409 Conflict when stale; API concepts, "Resource versions").
Tests see every write in ``writes``, make the cluster's
controllers act with ``assign_cluster_ip`` (the Service IP allocator) and ``collect_garbage`` (the
garbage collector: objects whose every Gateway/other owner is gone are deleted).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import functools
import ipaddress
import json
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOKEN = "test-token"
_CLOSE, _ABORT = "close", "abort"


@dataclass(frozen=True)
class TestPki:
    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    client_cert_pem: bytes  # CN=waypoint-test, signed by the CA
    client_key_pem: bytes


@functools.cache
def test_pki() -> TestPki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (EC P-256)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test kube CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, san: list[x509.GeneralName] | None) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    server = leaf("kube-apiserver", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = leaf("waypoint-test", None)
    return TestPki(ca.public_bytes(serialization.Encoding.PEM), *server, *client)


def plural(kind: str) -> str:
    """The resource word of a kind, as the API server spells the ones tests use."""
    low = kind.lower()
    if low.endswith("y") and low[-2] not in "aeiou":
        return low[:-1] + "ies"
    return low + "s"


def collection(api_version: str, kind: str) -> str:
    """``/api/v1/pods``, ``/apis/gateway.networking.k8s.io/v1/gateways``."""
    if "/" in api_version:
        return f"/apis/{api_version}/{plural(kind)}"
    return f"/api/{api_version}/{plural(kind)}"


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@dataclass(frozen=True)
class Write:
    """One write request as the server saw it."""

    method: str  # PATCH | DELETE
    path: str
    content_type: str
    field_manager: str
    force: bool
    status: int  # the answer's HTTP status
    user: str = ""  # who asked: "token", or "cert:<CN>" for a client certificate


@dataclass
class _Watch:
    path: str
    query: dict[str, str]
    queue: asyncio.Queue[dict[str, Any] | str] = field(default_factory=asyncio.Queue)


class FakeApiServer:
    """The API server stand-in. ``async with FakeApiServer() as api:``; ``api.url`` to connect."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.pki = test_pki()
        self.rv = 100  # the global resourceVersion (etcd revision)
        self.compacted = 0  # watches from below this get 410
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}  # path -> (ns, name) -> object
        self.history: list[tuple[str, int, dict[str, Any]]] = []  # (path, rv, event)
        self.missing: set[str] = set()  # collection paths answered 404
        self.lists: dict[str, int] = {}  # successful LIST requests per path
        self.watch_requests: list[tuple[str, str]] = []  # (path, resourceVersion asked)
        self.replayed = 0  # events sent from history to a watch that resumed
        self.writes: list[Write] = []  # every PATCH/DELETE, in order
        self._watches: list[_Watch] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> FakeApiServer:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=self.pki.ca_pem.decode())
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "s.crt"), Path(tmp, "s.key")
            cert.write_bytes(self.pki.server_cert_pem)
            key.write_bytes(self.pki.server_key_pem)
            ctx.load_cert_chain(cert, key)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a client certificate authenticates, or the token does
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- what tests do -----------------------------------------------------------------------
    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an object (ADDED or MODIFIED to watchers); returns it as stored."""
        path = collection(obj["apiVersion"], obj["kind"])
        stored = copy.deepcopy(dict(obj))
        md = stored.setdefault("metadata", {})
        key = (md.get("namespace", ""), md["name"])
        objects = self.objects.setdefault(path, {})
        event_type = "MODIFIED" if key in objects else "ADDED"
        self.rv += 1
        md["resourceVersion"] = str(self.rv)
        md.setdefault("uid", f"uid-{key[0]}-{key[1]}")
        md.setdefault("managedFields", [{"manager": "kubectl", "operation": "Update"}])  # as the server adds
        objects[key] = stored
        self._emit(path, {"type": event_type, "object": stored})
        return stored

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        path = collection(api_version, kind)
        stored = self.objects[path].pop((namespace, name))
        self.rv += 1
        gone = copy.deepcopy(stored)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(path, {"type": "DELETED", "object": gone})

    def compact(self) -> None:
        """Forget the history so far (etcd compaction): resuming from before now gets 410."""
        self.compacted = self.rv
        self.history.clear()

    def bookmark(self) -> None:
        for w in self._watches:
            w.queue.put_nowait({"type": "BOOKMARK", "object": {"kind": "Bookmark",
                                "metadata": {"resourceVersion": str(self.rv)}}})

    def close_watches(self) -> None:
        """End every open watch cleanly (its timeout, an API server restart)."""
        for w in self._watches:
            w.queue.put_nowait(_CLOSE)

    def break_watches(self) -> None:
        """Drop every open watch's connection mid-stream."""
        for w in self._watches:
            w.queue.put_nowait(_ABORT)

    def open_watches(self, path: str | None = None) -> int:
        return sum(1 for w in self._watches if path is None or w.path == path)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(collection(api_version, kind), {}).get((namespace, name))

    def assign_cluster_ip(self, namespace: str, name: str, *ips: str) -> dict[str, Any]:
        """What the Service IP allocator does: give a Service its cluster IP(s) (MODIFIED to watchers)."""
        service = copy.deepcopy(self.objects[collection("v1", "Service")][(namespace, name)])
        service.setdefault("spec", {}).update({"clusterIP": ips[0], "clusterIPs": list(ips)})
        return self.put(service)

    def collect_garbage(self) -> list[tuple[str, str, str]]:
        """What the garbage collector does: delete every object that has owners, none of which exists
        any more (matched by uid). Returns (kind, namespace, name) of each deleted object."""
        alive = {o["metadata"].get("uid") for objs in self.objects.values() for o in objs.values()}
        doomed = [o for objs in self.objects.values() for o in objs.values()
                  if o["metadata"].get("ownerReferences")
                  and not any(r.get("uid") in alive for r in o["metadata"]["ownerReferences"])]
        for o in doomed:
            self.delete(o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        return [(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in doomed]

    def kubeconfig(self, path: Path, *, client_cert: bool = False, token: str | None = None) -> Path:
        """Write a kubeconfig for this server (CA inline; token or client certificate)."""
        user: dict[str, Any] = {"token": token or self.token}
        if client_cert:
            user = {"client-certificate-data": b64(self.pki.client_cert_pem),
                    "client-key-data": b64(self.pki.client_key_pem)}
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "fake", "cluster": {"server": self.url,
                                                      "certificate-authority-data": b64(self.pki.ca_pem)}}],
            "users": [{"name": "tester", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "tester"}}],
        }
        path.write_text(json.dumps(doc))  # JSON is YAML
        return path

    # -- the HTTP side -----------------------------------------------------------------------
    def _emit(self, path: str, event: dict[str, Any]) -> None:
        self.history.append((path, self.rv, event))
        for w in self._watches:
            if w.path == path and _selected(event["object"], w.query):
                w.queue.put_nowait(event)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                method, target, headers = _parse_head(head)
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                if not await self._request(method, target, headers, writer, body):
                    return
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _request(
        self, method: str, target: str, headers: dict[str, str], writer: asyncio.StreamWriter, body: bytes = b""
    ) -> bool:
        """Answer one request; False when the connection is to be dropped."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if not self._authenticated(headers, writer):
            return await _send_json(writer, 401, status(401, "Unauthorized", "Unauthorized"))
        if method in ("PATCH", "DELETE", "POST", "PUT"):
            if method in ("POST", "PUT"):
                code, answer = self._create_or_replace(method, url.path, body)
            else:
                code, answer = self._write(method, url.path, query, headers.get("content-type", ""), body)
            self.writes.append(Write(method, url.path, headers.get("content-type", ""),
                                     query.get("fieldManager", ""), query.get("force") == "true", code,
                                     _user(headers, writer)))
            return await _send_json(writer, code, answer)
        if method == "GET" and not query.get("watch") and _namespaced_object(url.path):
            where = _object_target(url.path)
            assert where is not None
            found = self.objects.get(where[0], {}).get((where[1], where[2]))
            if found is None:
                return await _send_json(writer, 404, status(404, "NotFound", f"{where[2]!r} not found"))
            return await _send_json(writer, 200, found)
        if method != "GET":
            return await _send_json(writer, 405, status(405, "MethodNotAllowed", f"{method} is not served here"))
        if url.path in self.missing or not url.path.startswith(("/api/", "/apis/")):
            missing = status(404, "NotFound", "the server could not find the requested resource")
            return await _send_json(writer, 404, missing)
        if query.get("watch") in ("1", "true"):
            return await self._watch(url.path, query, writer)
        return await _send_json(writer, 200, self._list(url.path, query))

    def _authenticated(self, headers: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        if headers.get("authorization") == f"Bearer {self.token}":
            return True
        return bool(writer.get_extra_info("peercert"))  # verified against our CA by the handshake

    def _write(
        self, method: str, path: str, query: dict[str, str], content_type: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """A PATCH (server-side apply) or DELETE of one object: (HTTP status, answer body)."""
        target = _object_target(path)
        if target is None or target[0] in self.missing:
            return 404, status(404, "NotFound", "the server could not find the requested resource")
        coll, namespace, name, sub = target
        stored = self.objects.get(coll, {}).get((namespace, name))
        if method == "DELETE":
            if stored is None:
                return 404, status(404, "NotFound", f"{name!r} not found")
            self.delete(stored["apiVersion"], stored["kind"], namespace, name)
            return 200, stored
        if content_type.split(";")[0].strip() != "application/apply-patch+yaml":
            return 415, status(415, "UnsupportedMediaType", f"the media type {content_type!r} is not supported")
        if not query.get("fieldManager"):
            return 422, status(422, "Invalid", "fieldManager: Required value: is required for apply patch")
        try:
            patch = yaml.safe_load(body)
        except yaml.YAMLError as e:
            return 400, status(400, "BadRequest", f"invalid apply patch: {e}")
        if not isinstance(patch, dict) or patch.get("metadata", {}).get("name") != name:
            return 400, status(400, "BadRequest", "the apply patch must be an object naming the one in the URL")
        if sub == "status":
            if stored is None:
                return 404, status(404, "NotFound", f"{name!r} not found")
            return 200, self._apply_status(stored, patch.get("status") or {}, query["fieldManager"])
        if sub:
            return 404, status(404, "NotFound", f"no subresource {sub!r}")
        return (201 if stored is None else 200), self._apply(stored, patch, namespace, query["fieldManager"])

    def _create_or_replace(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """``POST`` to ``.../namespaces/NS/PLURAL`` or ``PUT`` to ``.../namespaces/NS/PLURAL/NAME``."""
        try:
            obj = json.loads(body)
        except ValueError as e:
            return 400, status(400, "BadRequest", f"invalid body: {e}")
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict) or not obj["metadata"].get("name"):
            return 400, status(400, "BadRequest", "the body must be an object with metadata.name")
        md = obj["metadata"]
        if method == "POST":
            target = _object_target(f"{path}/{md['name']}")
        else:
            target = _object_target(path) if _namespaced_object(path) else None
        if target is None or target[3] or (method == "PUT" and md["name"] != target[2]):
            return 404, status(404, "NotFound", "the server could not find the requested resource")
        coll, namespace, name, _ = target
        md["namespace"] = namespace
        stored = self.objects.get(coll, {}).get((namespace, name))
        if method == "POST":
            if stored is not None:
                return 409, status(409, "AlreadyExists", f"{coll.rsplit('/', 1)[-1]} {name!r} already exists")
            md.pop("resourceVersion", None)
            return 201, self.put(obj)
        if stored is None:
            return 404, status(404, "NotFound", f"{name!r} not found")
        if md.get("resourceVersion") and md["resourceVersion"] != stored["metadata"]["resourceVersion"]:
            return 409, status(409, "Conflict", f"Operation cannot be fulfilled on {name!r}: the object has "
                                                "been modified; please apply your changes to the latest version")
        return 200, self.put(obj)

    def _apply(
        self, stored: dict[str, Any] | None, patch: dict[str, Any], namespace: str, manager: str
    ) -> dict[str, Any]:
        patch = {k: v for k, v in patch.items() if k != "status"}
        if namespace:
            patch["metadata"]["namespace"] = namespace
        if stored is None:
            new = copy.deepcopy(patch)
            new["metadata"].update(generation=1, creationTimestamp="2026-01-01T00:00:00Z",
                                   uid=f"uid-{patch['kind'].lower()}-{namespace}-{patch['metadata']['name']}",
                                   managedFields=[{"manager": manager, "operation": "Apply"}])
            return self.put(new)
        new = _merged(stored, patch)
        if new == stored:
            return stored  # a no-op apply writes nothing
        if new.get("spec") != stored.get("spec"):
            new["metadata"]["generation"] = int(stored["metadata"].get("generation") or 0) + 1
        return self.put(new)

    def _apply_status(self, stored: dict[str, Any], status_patch: dict[str, Any], manager: str) -> dict[str, Any]:
        new = copy.deepcopy(stored)
        new["status"] = _merged(stored.get("status") or {}, status_patch)
        return stored if new == stored else self.put(new)

    def _list(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        self.lists[path] = self.lists.get(path, 0) + 1
        objects = [o for k, o in sorted(self.objects.get(path, {}).items()) if _selected(o, query)]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(objects) or 1
        page = objects[start:start + limit]
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]  # as the server does
        md: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if start + limit < len(objects):
            md["continue"] = str(start + limit)
        return {"kind": "List", "apiVersion": "v1", "metadata": md, "items": items}

    async def _watch(self, path: str, query: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        asked = query.get("resourceVersion", "")
        self.watch_requests.append((path, asked))
        watch = _Watch(path, query)
        first: list[dict[str, Any] | str]
        if asked in ("", "0"):
            first = [{"type": "ADDED", "object": o} for o in self.objects.get(path, {}).values() if _selected(o, query)]
        elif int(asked) < self.compacted:
            first = [{"type": "ERROR", "object": status(
                410, "Expired", f"too old resource version: {asked} ({self.compacted})")}, _CLOSE]
        else:
            first = [e for p, rv, e in self.history if p == path and rv > int(asked) and _selected(e["object"], query)]
            self.replayed += len(first)
        for event in first:  # queued before registering, with no await between: nothing slips through
            watch.queue.put_nowait(event)
        self._watches.append(watch)
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            timeout = float(query.get("timeoutSeconds") or 1800)
            return await asyncio.wait_for(self._stream(watch, writer), timeout)
        except TimeoutError:
            writer.write(b"0\r\n\r\n")
            return True
        finally:
            self._watches.remove(watch)

    async def _stream(self, watch: _Watch, writer: asyncio.StreamWriter) -> bool:
        while True:
            item = await watch.queue.get()
            if item == _ABORT:
                writer.transport.abort()
                return False
            if item == _CLOSE:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return True
            data = json.dumps(item).encode() + b"\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()


def _selected(obj: Mapping[str, Any], query: Mapping[str, str]) -> bool:
    """The one field selector tests need: ``metadata.name=X`` (and ``metadata.namespace=X``)."""
    for term in filter(None, query.get("fieldSelector", "").split(",")):
        name, _, value = term.partition("=")
        if obj.get("metadata", {}).get(name.removeprefix("metadata.")) != value:
            return False
    return True


def _object_target(path: str) -> tuple[str, str, str, str] | None:
    """``/api/v1/namespaces/NS/services/NAME[/status]`` or ``/apis/G/V/PLURAL/NAME`` ->
    (collection path, namespace, name, subresource); None for anything else."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) > 2:
        base, rest = parts[:2], parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        base, rest = parts[:3], parts[3:]
    else:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 4:
        namespace, rest = rest[1], rest[2:]
    if len(rest) not in (2, 3):
        return None
    return "/" + "/".join([*base, rest[0]]), namespace, rest[1], rest[2] if len(rest) == 3 else ""


def _namespaced_object(path: str) -> bool:
    """``/api/v1/namespaces/NS/PLURAL/NAME`` or ``/apis/G/V/namespaces/NS/PLURAL/NAME``."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    return len(rest) == 4 and rest[0] == "namespaces"


def _user(headers: Mapping[str, str], writer: asyncio.StreamWriter) -> str:
    if headers.get("authorization", "").startswith("Bearer "):
        return "token"
    cert = writer.get_extra_info("peercert") or {}
    cn = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return f"cert:{cn[0]}" if cn else ""


def _merged(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Maps merged key by key, anything else (lists too) replaced: the apply simplification."""
    out = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def _send_json(writer: asyncio.StreamWriter, code: int, body: dict[str, Any]) -> bool:
    data = json.dumps(body).encode()
    reason = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
              405: "Method Not Allowed", 409: "Conflict", 410: "Gone", 415: "Unsupported Media Type",
              422: "Unprocessable Entity"}.get(code, "X")
    writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (code, reason.encode(), len(data), data))
    await writer.drain()
    return True
