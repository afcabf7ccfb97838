"""waypoint: a Python data plane for Istio's ambient mode (ztunnel and waypoint roles over HBONE)."""

__version__ = "0.1.0"
