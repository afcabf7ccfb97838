"""Dev addresses for waypoints that have none: a Gateway without ``spec.addresses`` still needs
somewhere to listen on localhost. Assigned on 127.0.251.0/24 in name order, so a folder always
gets the same plan; the admin config dump shows it."""

from __future__ import annotations

import dataclasses
import ipaddress

from waypoint.mesh.model import MeshSnapshot, Waypoint

DEV_WAYPOINT_BASE = ipaddress.IPv4Address("127.0.251.10")


def assign_waypoint_addresses(snapshot: MeshSnapshot) -> MeshSnapshot:
    """The snapshot with every address-less waypoint given a 127/8 dev address."""
    missing = sorted((wp for wp in snapshot.waypoints if not wp.addresses), key=lambda w: (w.namespace, w.name))
    if not missing:
        return snapshot
    assigned: dict[tuple[str, str], Waypoint] = {
        (wp.namespace, wp.name): dataclasses.replace(wp, addresses=(str(DEV_WAYPOINT_BASE + i),))
        for i, wp in enumerate(missing)
    }
    waypoints = tuple(assigned.get((wp.namespace, wp.name), wp) for wp in snapshot.waypoints)
    return dataclasses.replace(snapshot, waypoints=waypoints)
