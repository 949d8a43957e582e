"""Exceptions that the CLI turns into one red line and an exit code.

Library code raises these for problems the user can fix (bad settings, a missing
file, no network). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2
#: Some inputs could not be read; the others were processed (``infer``).
EXIT_PARTIAL = 3
#: Training stopped by Ctrl-C after saving its state (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130


class MritumorError(Exception):
    """A problem the user can act on; the message says what to do."""

    exit_code = EXIT_FAILURE


class UsageError(MritumorError):
    """Bad input from the user: an unknown key, a value out of range, a missing file."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A settings file, environment variable or flag that does not validate."""


class BackboneError(UsageError):
    """An unknown backbone name or weights that cannot be used with it."""


class OfflineError(MritumorError):
    """Something had to be downloaded and the network was not reachable."""
