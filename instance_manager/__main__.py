from instance_manager.cli import main

raise SystemExit(main())
