"""Where the benchmark's messages go: status lines on stdout, warnings and progress bars on stderr.

stderr is kept for progress bars and the one-line ``error: ...`` of a user mistake, so a script can read the
status lines and the report from stdout alone.
"""
from __future__ import annotations

import sys


class Log:
    """Status lines, silenced by ``--quiet`` (which also turns off the progress bars)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    @property
    def progress(self) -> bool:
        return not self.quiet


def warn(msg: str) -> None:
    """A warning is shown even with ``--quiet``: it says a number may not mean what it seems to."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)
