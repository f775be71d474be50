"""What every command line shares: one-line errors, exit codes, no tracebacks for users."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import VnydusError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNIMPLEMENTED = 3


class NotImplementedCommand(VnydusError):
    """A command that exists in the interface but is not built yet: say so, never pretend."""


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; turn our errors into one line on stderr and a non-zero exit."""
    try:
        return body()
    except NotImplementedCommand as exc:
        print(f"{prog}: not implemented yet: {exc}", file=sys.stderr)
        return EXIT_UNIMPLEMENTED
    except VnydusError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
