"""``python -m sciddpm`` runs the command line."""

from sciddpm.cli import main

raise SystemExit(main())
