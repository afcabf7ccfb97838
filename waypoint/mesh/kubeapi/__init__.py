"""The Kubernetes API server as a mesh config source (list + watch), beside the config folder.

Modules: :mod:`.resources` (the table of resources read), :mod:`.store` (sans-I/O per-resource store
and watch events), :mod:`.reflector` (client-go's list/watch/backoff policy, pure), :mod:`.config`
(in-cluster and kubeconfig connection), :mod:`.client` (the httpx edge), :mod:`.watcher` (the asyncio
loop per resource), :mod:`.source` (:class:`KubeSource`, shaped like ``FolderSource``).
"""

from waypoint.mesh.kubeapi.config import ClusterConfig, KubeConfigError, from_kubeconfig, in_cluster
from waypoint.mesh.kubeapi.resources import RESOURCES, Resource
from waypoint.mesh.kubeapi.source import KubeSource

__all__ = ["RESOURCES", "ClusterConfig", "KubeConfigError", "KubeSource", "Resource", "from_kubeconfig", "in_cluster"]
