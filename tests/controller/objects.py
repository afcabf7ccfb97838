"""Gateways as users write them, for the controller's tests."""

from __future__ import annotations

from typing import Any


def gateway(
    name: str = "waypoint",
    namespace: str = "shop",
    *,
    cls: str = "istio-waypoint",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    listeners: list[dict[str, Any]] | None = None,
    uid: str | None = None,
    generation: int = 1,
) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": namespace, "generation": generation,
                          "uid": uid or f"uid-gw-{namespace}-{name}"}
    if labels:
        md["labels"] = labels
    if annotations:
        md["annotations"] = annotations
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": md,
        "spec": {
            "gatewayClassName": cls,
            "listeners": listeners if listeners is not None else [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }
