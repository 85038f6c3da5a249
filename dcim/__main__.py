from dcim.app.cli import main

raise SystemExit(main())
