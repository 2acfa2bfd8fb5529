"""`python -m policyengine`: the same as the `policyengine` command."""

from ._cli import main

raise SystemExit(main())
