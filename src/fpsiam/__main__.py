from fpsiam.cli import main

raise SystemExit(main())
