"""User-facing errors: the command-line entries print these as one line, no traceback."""
from __future__ import annotations

import functools
import os
import signal
import sys


class ClipscratchError(Exception):
    """A problem with the user's input (file, config, checkpoint): shown as one line."""


class TextTooLongError(ClipscratchError, RuntimeError):
    """A text has more tokens than a context length allows (OpenAI's tokenize raises
    RuntimeError here, so this is one too)."""


def one_line(error: BaseException) -> str:
    """The message of an error, without the worker traceback a DataLoader worker wraps around
    an exception it re-raises in the main process."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def _parent_is_accelerate_launch() -> bool:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return False
    return any(os.path.basename(a) == "accelerate" or a.endswith("accelerate/commands/launch.py") for a in argv[:3]) and "launch" in argv


def _end_single_process_launcher() -> None:
    """Under ``accelerate launch`` with one process, the launcher turns a non-zero exit into a
    CalledProcessError traceback printed under our one line. Our error was already said: end
    the waiting launcher (it holds nothing), so the one line stays the last word; the shell
    still sees a non-zero exit."""
    if os.environ.get("WORLD_SIZE", "1") == "1" and os.environ.get("ACCELERATE_MIXED_PRECISION") is not None \
            and _parent_is_accelerate_launch():
        sys.stderr.flush()
        os.kill(os.getppid(), signal.SIGTERM)


def cli_errors(main):
    """Decorator for command-line entries: ClipscratchError and missing files -> one line, exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ClipscratchError as e:
            message = f"error: {one_line(e)}"
        except FileNotFoundError as e:
            message = f"error: file not found: {e.filename or e}"
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        print(message, file=sys.stderr)
        _end_single_process_launcher()
        sys.exit(2)

    return wrapper
