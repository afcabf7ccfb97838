"""The Gateway status and the per-Gateway plan, as pure functions.

Status as Istio's reportGatewayStatus/setProgrammedCondition (IS:pilot/pkg/config/kube/gateway/
conversion.go, "Status reporting helpers"); plan decisions as deploymentcontroller.go (Reconcile,
IsManaged, canManage).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.controller.objects import gateway
from waypoint.controller.cache import Observed
from waypoint.controller.reconcile import is_managed, namespace_filter, plan_gateway, stale_bindings, validate
from waypoint.controller.settings import ControllerSettings
from waypoint.controller.status import Rejection, ServiceView, gateway_status, status_differs

HOST = "waypoint.shop.svc.cluster.local"
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_no_service_yet_is_accepted_but_not_programmed_with_istios_message() -> None:
    st = gateway_status(gateway(), hostname=HOST, service=None, rejection=None, now=T0)
    assert conds(st) == {
        "Accepted": ("True", "Accepted", "Resource accepted"),
        "Programmed": ("False", "AddressNotAssigned",
                       f'Failed to assign to any requested addresses: hostname "{HOST}" not found'),
    }
    assert st["addresses"] == []


def test_service_without_cluster_ip_is_address_not_assigned() -> None:
    st = gateway_status(gateway(), hostname=HOST, service=ServiceView((), (15021, 15008)), rejection=None, now=T0)
    assert conds(st)["Programmed"][:2] == ("False", "AddressNotAssigned")


def test_service_with_cluster_ip_programs_and_reports_ip_then_hostname_waypoint_address_type_both() -> None:
    st = gateway_status(gateway(generation=3), hostname=HOST, service=ServiceView(("10.96.0.7",), (15021, 15008)),
                        rejection=None, now=T0)
    assert conds(st)["Programmed"] == ("True", "Programmed",
                                       f"Resource programmed, assigned to service(s) {HOST}:15008")
    assert st["addresses"] == [{"type": "IPAddress", "value": "10.96.0.7"}, {"type": "Hostname", "value": HOST}]
    assert {c["observedGeneration"] for c in st["conditions"]} == {3}
    assert {c["lastTransitionTime"] for c in st["conditions"]} == {T0}


def test_rejected_gateway_is_not_accepted_and_not_programmed() -> None:
    st = gateway_status(gateway(), hostname=HOST, service=None, rejection=Rejection("ListenersNotValid", "no HBONE"),
                        now=T0)
    assert conds(st) == {"Accepted": ("False", "ListenersNotValid", "no HBONE"),
                         "Programmed": ("False", "Invalid", "Gateway is not accepted: no HBONE")}


def test_last_transition_time_moves_only_when_the_status_flips_update_condition_if_changed() -> None:
    gw = gateway()
    gw["status"] = gateway_status(gw, hostname=HOST, service=None, rejection=None, now=T0)
    later = gateway_status(gw, hostname=HOST, service=ServiceView(("10.0.0.1",), (15008,)), rejection=None, now=T1)
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times == {"Accepted": T0, "Programmed": T1}


def test_status_differs_ignores_time_only() -> None:
    gw = gateway()
    first = gateway_status(gw, hostname=HOST, service=None, rejection=None, now=T0)
    assert not status_differs(first, gateway_status(gw, hostname=HOST, service=None, rejection=None, now=T1))
    assert status_differs(first, gateway_status(gw, hostname=HOST, service=ServiceView(("10.0.0.1",), (15008,)),
                                                rejection=None, now=T1))
    assert status_differs(None, first)


@pytest.mark.parametrize(("gw", "reason", "field"), [
    (gateway(listeners=[{"name": "http", "port": 80, "protocol": "HTTP"}]), "ListenersNotValid", "spec.listeners"),
    (gateway(listeners=[]), "ListenersNotValid", "spec.listeners"),
    (gateway(labels={"istio.io/waypoint-for": "everything"}), "Invalid", "metadata.labels"),
])
def test_invalid_waypoints_are_rejected_with_gateway_api_reasons(gw: dict[str, Any], reason: str, field: str) -> None:
    rejection = validate(gw)
    assert rejection is not None
    assert rejection.reason == reason
    assert rejection.message.startswith(field)


def test_a_valid_waypoint_passes_validation() -> None:
    assert validate(gateway()) is None


def nothing(kind: str, ns: str, name: str) -> Observed | None:
    return None


def test_plan_is_none_for_another_class_or_an_unmanaged_gateway() -> None:
    assert plan_gateway(gateway(cls="istio"), nothing, ControllerSettings(), T0) is None
    unmanaged = gateway()
    unmanaged["spec"]["addresses"] = [{"type": "Hostname", "value": "elsewhere.example"}]
    assert not is_managed(unmanaged)
    assert plan_gateway(unmanaged, nothing, ControllerSettings(), T0) is None
    one_ip = gateway()
    one_ip["spec"]["addresses"] = [{"value": "10.0.0.9"}]
    assert is_managed(one_ip)


def test_plan_applies_everything_and_the_status_for_a_new_gateway() -> None:
    plan = plan_gateway(gateway(), nothing, ControllerSettings(), T0)
    assert plan is not None
    assert [o["kind"] for o in plan.apply] == ["ServiceAccount", "ClusterRoleBinding", "Service", "Deployment"]
    assert plan.status is not None and plan.rejection is None


def test_plan_leaves_objects_it_did_not_make_alone_can_manage() -> None:
    def lookup(kind: str, ns: str, name: str) -> Observed | None:
        return Observed(managed=False, gateway=None) if kind == "Service" else None

    plan = plan_gateway(gateway(), lookup, ControllerSettings(), T0)
    assert plan is not None
    assert "Service" not in [o["kind"] for o in plan.apply]
    assert plan.not_ours == ("Service shop/waypoint",)
    assert plan.status is not None
    assert plan.status["conditions"][1]["status"] == "False"  # someone else's Service is not our address


def test_plan_of_an_invalid_waypoint_applies_nothing_but_the_status() -> None:
    plan = plan_gateway(gateway(listeners=[]), nothing, ControllerSettings(), T0)
    assert plan is not None and plan.apply == () and plan.rejection is not None
    assert plan.status is not None and plan.status["conditions"][0]["status"] == "False"


def test_plan_writes_no_status_when_the_gateway_already_shows_it() -> None:
    gw = gateway()
    gw["status"] = gateway_status(gw, hostname=HOST, service=None, rejection=None, now=T0)
    plan = plan_gateway(gw, nothing, ControllerSettings(), T1)
    assert plan is not None and plan.status is None


def test_stale_bindings_are_ours_without_a_gateway_in_scope() -> None:
    bindings = {
        ("", "waypoint:shop:waypoint"): Observed(True, ("shop", "waypoint")),
        ("", "waypoint:shop:gone"): Observed(True, ("shop", "gone")),
        ("", "waypoint:other:gone"): Observed(True, ("other", "gone")),
        ("", "someone-elses"): Observed(False, None),
    }
    assert stale_bindings([gateway()], bindings, namespace_filter(["shop"])) == ["waypoint:shop:gone"]
    assert stale_bindings([gateway()], bindings, namespace_filter([])) == ["waypoint:other:gone", "waypoint:shop:gone"]
