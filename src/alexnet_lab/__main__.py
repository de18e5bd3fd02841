"""`python -m alexnet_lab` runs the command-line tool."""

from alexnet_lab.cli import main

raise SystemExit(main())
