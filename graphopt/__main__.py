from graphopt.cli.main import main

raise SystemExit(main())
