from hyperp.cli import main

raise SystemExit(main())
