"""`python -m mxroute` is the `mxroute` command."""

from mxroute.cli import main

raise SystemExit(main())
