"""The ``sciddpm`` command line and its demos: thin wrappers over the Python API.

- :mod:`~sciddpm.cli.commands`: the parser and the commands (``plugins``, ``train``, ``sample``, ``demo``);
- :mod:`~sciddpm.cli.bridge_commands`: ``import-diffusers``;
- :mod:`~sciddpm.cli.demo`: the digits demo.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from sciddpm.cli.commands import main as run

    return run(argv)
