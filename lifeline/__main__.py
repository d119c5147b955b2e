"""``python -m lifeline``."""

from lifeline.cli import main

raise SystemExit(main())
