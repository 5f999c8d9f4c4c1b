"""`python -m mxroute` is the `mxroute` command."""

from mxroute.cli.main import main

raise SystemExit(main())
