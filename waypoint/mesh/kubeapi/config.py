"""Where the API server is and how to talk to it: in-cluster service account, or a kubeconfig.

In a pod, client-go ``rest.InClusterConfig`` reads ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the
service account files under ``/var/run/secrets/kubernetes.io/serviceaccount`` (``token``, ``ca.crt``,
``namespace``); the token is re-read from its file, since bound tokens rotate (client-go
``transport.NewCachedFileTokenSource``, one minute). Outside, a kubeconfig file (Kubernetes docs,
"Organizing cluster access using kubeconfig files"): the current context's cluster ``server``,
``certificate-authority(-data)``, ``insecure-skip-tls-verify``; its user's ``token``/``tokenFile``
or ``client-certificate(-data)`` + ``client-key(-data)``. Relative paths are relative to the file.
Exec plugins and auth providers are not supported (an error says so).
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from waypoint.errors import WaypointError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_S = 60.0


class KubeConfigError(WaypointError):
    """No usable connection config (not in a cluster, a broken kubeconfig)."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """How to reach one API server. Certificates are PEM bytes; the token may live in a file."""

    server: str  # https://host:port
    ca_pem: bytes | None = None  # None: the system trust store
    insecure_skip_tls_verify: bool = False
    token: str | None = None
    token_file: Path | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    namespace: str = "default"  # the pod's own namespace in a cluster (informational)
    origin: str = field(default="", compare=False)  # "in-cluster" or the kubeconfig path, for logs

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS client context: verify the server with the CA (or not, when told), and present
        the client certificate when there is one."""
        cadata = self.ca_pem.decode("ascii") if self.ca_pem is not None else None
        ctx = ssl.create_default_context(cadata=cadata)
        if self.insecure_skip_tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert_pem is not None and self.client_key_pem is not None:
            _load_client_cert(ctx, self.client_cert_pem, self.client_key_pem)
        return ctx


class TokenSource:
    """The bearer token, re-read from its file at most once a minute (``now`` is injected)."""

    def __init__(self, config: ClusterConfig, now: Callable[[], float]) -> None:
        self._config = config
        self._now = now
        self._cached: str | None = config.token
        self._read_at: float | None = None

    def token(self) -> str | None:
        path = self._config.token_file
        if path is None:
            return self._cached
        t = self._now()
        if self._read_at is None or t - self._read_at >= TOKEN_REREAD_S:
            try:
                self._cached = path.read_text().strip()
                self._read_at = t
            except OSError:
                if self._cached is None:
                    raise
        return self._cached


def in_cluster(
    env: Mapping[str, str] | None = None, account_dir: Path = SERVICE_ACCOUNT_DIR
) -> ClusterConfig:
    """client-go ``rest.InClusterConfig``: the service host/port from the environment, the CA and
    token from the mounted service account."""
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeConfigError(
            "not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset): pass a kubeconfig path"
        )
    token_file = account_dir / "token"
    try:
        ca = (account_dir / "ca.crt").read_bytes()
        token_file.read_text()
    except OSError as e:
        raise KubeConfigError(f"service account files missing under {account_dir}: {e}") from None
    namespace_file = account_dir / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.exists() else "default"
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ClusterConfig(
        server=f"https://{hostport}", ca_pem=ca, token_file=token_file, namespace=namespace,
        origin="in-cluster",
    )


def from_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> ClusterConfig:
    """The connection of ``context`` (default: ``current-context``) in a kubeconfig file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {e}") from None
    if not isinstance(doc, dict):
        raise KubeConfigError(f"kubeconfig {path} is not a mapping")
    name = context or doc.get("current-context")
    ctx = _named(doc, "contexts", "context", name, path)
    cluster = _named(doc, "clusters", "cluster", ctx.get("cluster"), path)
    user = _named(doc, "users", "user", ctx.get("user"), path) if ctx.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise KubeConfigError(f"kubeconfig {path}: exec and auth-provider users are not supported; use a token")
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise KubeConfigError(f"kubeconfig {path}: cluster {ctx.get('cluster')!r} has no server")
    base = path.parent
    token_file = user.get("tokenFile")
    return ClusterConfig(
        server=server.rstrip("/"),
        ca_pem=_pem(cluster, "certificate-authority", base),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=user.get("token") if isinstance(user.get("token"), str) else None,
        token_file=base / token_file if isinstance(token_file, str) else None,
        client_cert_pem=_pem(user, "client-certificate", base),
        client_key_pem=_pem(user, "client-key", base),
        namespace=str(ctx.get("namespace") or "default"),
        origin=str(path),
    )


def _named(doc: Mapping[str, Any], section: str, inner: str, name: Any, path: Path) -> dict[str, Any]:
    for entry in doc.get(section) or ():
        if isinstance(entry, dict) and entry.get("name") == name and isinstance(entry.get(inner), dict):
            return entry[inner]  # type: ignore[no-any-return]
    raise KubeConfigError(f"kubeconfig {path}: no {inner} named {name!r} in {section}")


def _pem(section: Mapping[str, Any], key: str, base: Path) -> bytes | None:
    """``<key>-data`` (base64 PEM) wins over ``<key>`` (a file path)."""
    data = section.get(f"{key}-data")
    if isinstance(data, str) and data:
        try:
            return base64.b64decode(data, validate=True)
        except ValueError:
            raise KubeConfigError(f"{key}-data is not base64") from None
    file = section.get(key)
    if isinstance(file, str) and file:
        try:
            return (base / file).read_bytes()
        except OSError as e:
            raise KubeConfigError(f"{key}: {e}") from None
    return None


def _load_client_cert(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """``ssl`` loads a certificate chain only from files: write both to a private temporary
    folder for the call, then remove them."""
    with tempfile.TemporaryDirectory(prefix="waypoint-kube-") as tmp:
        cert_path, key_path = Path(tmp, "client.crt"), Path(tmp, "client.key")
        for p, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        ctx.load_cert_chain(cert_path, key_path)
