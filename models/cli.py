"""What every entry point shares: user errors printed as one or two lines (exit code 2), tracebacks kept for
bugs, one flag style, and the cheap checks of paths that run before any expensive work.

* ``UserError``: a request the program cannot serve as given (a missing folder, a wrong config for a student,
  a corrupt file). Its message names the value, what was expected and how to fix it. ``run(main)`` prints it as
  ``error: ...`` and returns 2; any other exception is a bug and keeps its traceback. ``TURBO_VAED_DEBUG=1``
  or ``--debug`` shows the traceback of a user error too.
* ``ArgumentParser``: flags are spelled with underscores (``--max_steps``, ``--dynamic_frames``); the other
  spelling (``--max-steps``) is accepted as an alias of every long option, and ``--debug`` is always there.
* ``user_errors()``: the checking phase of an entry point runs inside it, so the ValueError /
  FileNotFoundError of a bad argument there becomes a UserError, while the same exception types raised later,
  in the real work, stay bugs with a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

__all__ = ["UserError", "ArgumentParser", "user_errors", "run", "debug_wanted", "check_dir", "check_writable_dir",
           "check_output_file"]


class UserError(ValueError):
    """A request the program cannot serve as given; the message says what, what was expected and how to fix it.
    A ValueError, so callers that catch ValueError keep working."""


def debug_wanted(argv: Sequence[str] | None = None) -> bool:
    """``TURBO_VAED_DEBUG`` set to anything but ''/0, or ``--debug`` among the arguments."""
    argv = sys.argv[1:] if argv is None else argv
    return os.environ.get("TURBO_VAED_DEBUG", "") not in ("", "0") or "--debug" in argv


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Inside: a ValueError or FileNotFoundError (bad argument, missing file) becomes a UserError."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        raise UserError(str(e)) from e


def run(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; a UserError is printed as ``error: <message>`` on stderr and gives exit code 2
    (re-raised with its traceback under ``--debug`` / ``TURBO_VAED_DEBUG=1``). An int result is the exit code,
    anything else means 0."""
    try:
        result = main(argv)
    except UserError as e:
        if debug_wanted(argv):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one flag style: ``--a_b`` and ``--a-b`` name the same option (the spelling registered is
    shown in ``--help``), and ``--debug`` (tracebacks for user errors too, see ``run``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show the traceback of a user error too "
                                                                "(or set TURBO_VAED_DEBUG=1)")

    def _respell(self, arg: str) -> str:
        if not arg.startswith("--") or arg == "--":
            return arg
        name, eq, value = arg.partition("=")
        if name in self._option_string_actions:
            return arg
        known = {o.replace("-", "_"): o for o in self._option_string_actions if o.startswith("--")}
        return known.get(name.replace("-", "_"), name) + eq + value

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        args = [self._respell(a) for a in args[:end]] + args[end:]
        return super().parse_known_args(args, namespace)


# ---- cheap checks of paths ------------------------------------------------------------------------
def check_dir(path: str | os.PathLike, flag: str, what: str = "folder") -> Path:
    """``path`` as an absolute Path; UserError unless it is an existing folder."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise UserError(f"{flag} {path}: no such {what} (relative paths start from {os.getcwd()})")
    if not p.is_dir():
        raise UserError(f"{flag} {path}: is a file, expected a {what}")
    return p


def _write_problem(folder: Path) -> str | None:
    """None when ``folder`` can be created and written to (a temporary file is made and removed), else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def check_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as an absolute Path, created if needed; UserError when it is a file or cannot be written."""
    p = Path(path).expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path}: is a file, expected a folder to write into; pass another {flag}")
    problem = _write_problem(p)
    if problem:
        raise UserError(f"{flag} {path}: cannot write there ({problem}); pass a folder you can write to")
    return p


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as an absolute Path of a file to write; UserError when it is a folder or its folder cannot be
    written."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        raise UserError(f"{flag} {path}: is a folder, expected a file name (e.g. {Path(path) / ('out' + p.suffix)} "
                        f"or another name)")
    problem = _write_problem(p.parent)
    if problem:
        raise UserError(f"{flag} {path}: cannot write in {p.parent} ({problem}); pass a path you can write to")
    return p
