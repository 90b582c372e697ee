"""User-facing errors: the command-line entries print these as one line, no traceback."""
from __future__ import annotations

import functools
import sys


class ClipscratchError(Exception):
    """A problem with the user's input (file, config, checkpoint): shown as one line."""


class TextTooLongError(ClipscratchError, RuntimeError):
    """A text has more tokens than a context length allows (OpenAI's tokenize raises
    RuntimeError here, so this is one too)."""


def cli_errors(main):
    """Decorator for command-line entries: ClipscratchError and missing files -> one line, exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ClipscratchError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except FileNotFoundError as e:
            print(f"error: file not found: {e.filename or e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
