"""What every ``forgeone`` command module shares."""

from __future__ import annotations

import sys


def fail(message: str, code: int = 1) -> int:
    """Say what went wrong on stderr; the exit status to return."""
    print(f"forgeone: {message}", file=sys.stderr)
    return code
