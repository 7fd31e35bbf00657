"""The one way a console script refuses a user's mistake: one line on stderr, ``Error: ...``
naming what is wrong and the fix, exit status 1, no traceback.

Each command checks its arguments before it makes a folder or imports the heavy libraries, and
wraps its checks and its one call into the library in :func:`refusing`, naming the exceptions
that mean bad input (``StoreError``, ``PrepareError``, ``ConfigError``...). Any other exception
is a bug of ours and keeps its traceback. Argument-parsing errors of the argparse commands go the
same way (:class:`ArgumentParser`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn


class UsageError(ValueError):
    """A mistake on the command line found by a command's own checks; the message names the
    argument and the fix."""


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(message).split())


def refuse(message: object) -> NoReturn:
    """Print ``Error: <message>`` as one line on stderr and exit with status 1.

    The ``SystemExit`` raised carries the line as its text (``str(exit)``, what a test that calls
    ``main()`` matches) and 1 as its code, so the interpreter prints nothing more.
    """
    line = f"Error: {one_line(message)}"
    print(line, file=sys.stderr, flush=True)
    stop = SystemExit(line)
    stop.code = 1
    raise stop


@contextmanager
def refusing(*mistakes: type[BaseException]) -> Iterator[None]:
    """Turn :class:`UsageError` and the exceptions ``mistakes`` (the ones that mean bad input)
    raised inside the block into :func:`refuse`'s one line and exit status 1."""
    try:
        yield
    except (UsageError, *mistakes) as error:
        refuse(error)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout; a description or epilog written in lines (examples) keeps them,
    one written as a paragraph is wrapped to the terminal."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors (a missing argument, an unknown option) as one line, exit
    status 1, pointing at ``--help``; an epilog of examples keeps its lines."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        refuse(f"{message}; see `{self.prog} --help`")
