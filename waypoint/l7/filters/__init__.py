"""Built-in HTTP filters (the router lives in ``waypoint.l7.router``)."""
