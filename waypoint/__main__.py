from waypoint.cli import main

raise SystemExit(main())
