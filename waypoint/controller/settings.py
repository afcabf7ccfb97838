"""What every rendered waypoint gets: chosen once by whoever runs the controller (its command line).

istiod takes these from its injection template values (``global.proxy.image``,
``global.waypoint.resources``); ours come from ``waypoint controller`` flags, with the defaults of
``deploy/waypoint-namespace.yaml`` (the hand-written equivalent of what is rendered).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/example/waypoint:0.1.0"
# Istio's workload certificate files (cert-chain.pem, key.pem, root-cert.pem), as `waypoint --cert-dir` reads them
CERT_DIR = "/var/run/secrets/workload-spiffe-credentials"


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """Inputs of :func:`waypoint.controller.render.render` besides the Gateway itself."""

    image: str = DEFAULT_IMAGE
    # None: no ``spec.replicas`` is applied, so `kubectl scale` or an HPA owns it (Istio's template sets none)
    replicas: int | None = None
    cpu_request: str = "100m"
    memory_request: str = "64Mi"
    concurrency: int = 2  # `waypoint waypoint --concurrency`: worker processes per pod
    cert_csi_driver: str = "csi.spiffe.io"  # any CSI driver that mounts Istio's certificate layout
    mesh_reader_role: str = "waypoint-mesh-reader"  # the ClusterRole of deploy/waypoint-rbac.yaml
    cluster_domain: str = "cluster.local"  # for the Service hostname reported in the Gateway status
    image_pull_policy: str = ""  # "" leaves the cluster default
