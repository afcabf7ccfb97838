"""The dev mesh: everything `waypoint dev` starts on localhost."""
