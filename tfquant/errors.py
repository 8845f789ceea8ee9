"""The one exception type for mistakes a user can make.

Anything raised as ``UserError`` is printed by the command-line tools as a
single line on stderr with exit status 2.  Every other exception is a bug in
tfquant and is allowed to show a traceback.
"""
import argparse


class UserError(Exception):
    """A problem with the user's input (paths, files, flags, data)."""


def run_cli(main, argv=None) -> int:
    """Run ``main(argv)`` and turn UserError / Ctrl-C into a one-line message."""
    import sys

    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line and exit 2 (a UserError), not a usage block."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")
