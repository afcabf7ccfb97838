"""Gateway API routing, pure: manifests -> route tables -> a RouteDecision per request.

``parse`` (dicts -> ``model`` values, validated), ``table`` (RouteTable/RouteTables/BoundResolver),
``status`` (Accepted/ResolvedRefs for the admin dump). ``decision`` is the contract with the
router filter.
"""
