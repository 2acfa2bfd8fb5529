"""`python -m policyengine`: the same as the `policyengine` command."""

from ._commands.cli import main

raise SystemExit(main())
