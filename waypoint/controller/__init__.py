"""``waypoint controller``: a waypoint Deployment for every Gateway of class ``istio-waypoint``, as istiod's
deployment controller makes one (IS:pilot/pkg/config/kube/gateway/deploymentcontroller.go).

Modules: :mod:`.settings` (what every rendered waypoint gets: image, resources, certificates),
:mod:`.render` (Gateway -> ServiceAccount, ClusterRoleBinding, Deployment, Service; pure),
:mod:`.status` (the Gateway's status from what exists; pure), :mod:`.cache` (what the cluster has, per
watched resource), :mod:`.reconcile` (one Gateway's plan: what to apply, what status to write; pure),
:mod:`.controller` (the asyncio loop: watch, reconcile, server-side apply), :mod:`.lease` (Lease leader
election decisions, client-go's; pure), :mod:`.leader` (its asyncio edge and the gate the loop waits on),
:mod:`.cli` (the command).
"""
