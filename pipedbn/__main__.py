from pipedbn.cli import main

raise SystemExit(main())
