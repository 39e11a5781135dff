"""`python -m lmforge` runs the CLI."""

from lmforge.cli.main import main

raise SystemExit(main())
