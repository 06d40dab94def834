"""Errors a user can act on, and the one boundary every command line ends through.

Every error of ours that names a file, key or setting and its fix derives from
``UserError``. Every command's ``__main__`` ends with ``errors.run(main)``
(absl's ``app.run`` with this boundary around flag parsing and ``main``), so
that whatever a user can fix ends the command with one line on stderr and
exit status 2, and a signal with 128 + its number, never with a traceback:

- a ``UserError``: its message;
- the command line: a flag absl refuses, a config override naming a key the
  config lacks (``--config.train.betta=1``), a config file that is missing,
  does not parse, defines no ``get_config``, or uses a key its (locked)
  config lacks (named with its line; any other error of a config file's code
  keeps its traceback);
- the disk: full (``ENOSPC``, ``EDQUOT``), read-only (``EROFS``), or a named
  path without permission (``EACCES``, ``EPERM``), also as tensorstore
  (orbax's checkpoints) reports them (``[os_error_code='28']``);
- a signal: ``Interrupted`` (the trainer saved its step) and
  ``KeyboardInterrupt`` exit 128 + the signal (SIGINT 130, SIGTERM 143).

Anything else is a bug and keeps its traceback. ``BDPO_DEBUG=1`` in the
environment (or ``-v 1``) prints the traceback of the above too, with the same
exit status. Libraries' error logs keep their first line (orbax logs a
traceback per failed write of a checkpoint on a full disk) unless debugging,
and open progress bars end their line before the error's. Imports only the
standard library and absl (tqdm where the command loaded it), so that the JAX
and the torch side both use it.

A command's main alone (``app.run(main_with_clear_errors(main))``) gets the
boundary around ``main`` but absl's own handling of the command line: use
``run``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

EXIT_USER_ERROR = 2
DEBUG_VARIABLE = "BDPO_DEBUG"


class UserError(ValueError):
    """Bad input the user can fix: the message names the thing and the fix."""


class Interrupted(Exception):
    """The command saved its work and stopped on a signal; it exits 128 + ``signum``."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}, saved it")
        self.step, self.signum = step, signum


def run(main: Callable[[list[str]], Any], define_flags: Callable[[], Any] | None = None) -> None:
    """A command's ``if __name__ == "__main__":`` body, in place of ``app.run(main)``. ``define_flags``:
    flags defined inside the boundary (a config file flag with a default reads the command line's
    overrides as it is defined)."""
    from absl import app

    app.run(main_with_clear_errors(main), flags_parser=functools.partial(parse_flags, define_flags=define_flags))


def main_with_clear_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """``main`` inside the boundary (``run`` uses it; flag parsing is ``parse_flags``)."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _keep_first_line_of_library_errors()
        try:
            return main(*args, **kwargs)
        except BaseException as e:
            outcome = explain(e)
            if outcome is None:
                raise
            _exit(*outcome)

    return wrapped


def explain(error: BaseException) -> tuple[int, str] | None:
    """(exit status, the line to print) of an error the user can act on; None for a bug."""
    if isinstance(error, Interrupted):
        return 128 + error.signum, f"{error}; run the same command again to resume"
    if isinstance(error, KeyboardInterrupt):
        return 128 + signal.SIGINT, "stopped by SIGINT; run the same command again: finished work is kept"
    if isinstance(error, UserError):
        return EXIT_USER_ERROR, f"error: {one_line(str(error))}"
    problem = disk_problem(error)
    return None if problem is None else (EXIT_USER_ERROR, f"error: {problem}")


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
PERMISSION = (errno.EACCES, errno.EPERM)
AGAIN = "then run the same command again: finished work is kept"
# tensorstore (orbax's array writer) reports an OS error inside a ValueError's message.
_TENSORSTORE_OS_ERROR = re.compile(r"\[os_error_code='(\d+)'\]")
_QUOTED_PATH = re.compile(r"\"(/[^\"]+)\"")


def disk_problem(error: BaseException) -> str | None:
    """What the disk refused and what to do, for an OS error on the user's storage."""
    code, where = None, None
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list) and error.args[0]:
        _, where, why = error.args[0][0]  # copytree lists (source, destination, "[Errno N] ...") per file
        code = int(match[1]) if (match := re.match(r"\[Errno (\d+)\]", str(why))) else None
    elif isinstance(error, OSError):
        code, where = error.errno, error.filename
    elif match := _TENSORSTORE_OS_ERROR.search(str(error)):
        code = int(match[1])
        where = next(iter(_QUOTED_PATH.findall(str(error))), None)
    if code in DISK_FULL:
        place = f" under {where}" if where else ""
        return f"{os.strerror(code)}{place}: free space or choose another place, {AGAIN}"
    if code == errno.EROFS:
        return f"{where or 'the output'} is on a read-only file system: choose a writable place, {AGAIN}"
    if code in PERMISSION and where:
        return f"permission denied on {where}: choose a place this user may write (and read), {AGAIN}"
    return None


def one_line(text: str) -> str:
    """A message's lines joined with "; " (a line ending in ":" runs into the next)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "".join(f"{line} " if line.endswith(":") else f"{line}; " for line in lines).rstrip("; ")


def debugging() -> bool:
    """Whether to print tracebacks: ``BDPO_DEBUG`` set (not 0), or ``--verbosity`` above 0."""
    from absl import flags

    if os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0"):
        return True
    return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value > 0


def _exit(status: int, line: str) -> NoReturn:
    _close_progress_bars()
    if debugging():
        traceback.print_exc()
    print(line, file=sys.stderr, flush=True)
    sys.exit(status)


def _close_progress_bars() -> None:
    """tqdm's open bars end their line, so that the error starts one of its own."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


def parse_flags(argv: list[str], define_flags: Callable[[], Any] | None = None) -> list[str]:
    """absl's parsing of the command line; what it or a config file refuses is one line and exit 2."""
    from absl import flags

    try:
        if define_flags is not None:
            define_flags()
        rest = flags.FLAGS(argv)
        _check_config_files()
        return rest
    except Exception as e:
        problem = command_line_problem(e, argv)
        if problem is None:
            raise
        _exit(EXIT_USER_ERROR, f"error: {problem}")


def command_line_problem(error: Exception, argv: Sequence[str]) -> str | None:
    """The flag or config file at fault and the fix, for an error raised while parsing ``argv``; None for a bug."""
    from absl import flags

    if isinstance(error, flags.Error):
        return _flag_error(str(error))
    if isinstance(error, SyntaxError):  # a config file (or a module it imports) does not parse
        return f"{error.filename}, line {error.lineno}: {error.msg}: correct the config file"
    caller = _ml_collections_caller(error) if isinstance(error, KeyError | AttributeError | OSError) else None
    if caller is None:
        return None  # raised by a config file's own code, not through ml_collections: a bug keeps its traceback
    key_error = error if isinstance(error, KeyError) else error.__context__
    text = str(key_error.args[0] if isinstance(key_error, KeyError) and key_error.args else error)
    key = text.splitlines()[0].strip("'\"")
    override = next((a for a in argv if key in _override_path(a)), None)
    if override is None and caller.filename != __file__ and not isinstance(error, OSError):
        return f"{caller.filename}, line {caller.lineno}: {_key_problem(text)}: correct the config file"  # its key
    config = f"--config={_flag_value(argv, 'config')}"
    if isinstance(error, OSError):  # the file could not be read: ml_collections raises that when it is first used
        return f"{config}: cannot load the config file ({one_line(str(error.__cause__ or error)).rsplit('; ', 1)[-1]})"
    if "get_config" in str(error):
        return f"{config}: the file defines no get_config(); a config file's get_config(arg) returns its config"
    return f"{override or f'an override of {config}'}: {_key_problem(text)}; use one of its keys"


def _key_problem(text: str) -> str:
    """ml_collections' message of a key a config lacks ("'betta'\nDid you mean "beta" instead of "betta"?",
    or that a locked config cannot add it, with a dump of the section) in one line."""
    problem, *hint = re.sub(r'\s*Other fields present: ".*"', "", text).splitlines()
    if re.fullmatch(r"'[^']*'", problem):
        problem = f"the config has no key {problem}"
    return f"{problem}{f' ({hint[0]})' if hint else ''}"


def _override_path(arg: str) -> list[str]:
    """``--config.train.beta=1`` -> ["train", "beta"]; [] for anything else."""
    match = re.match(r"^--?[A-Za-z_][\w-]*\.([^=]+)", arg)
    return match[1].split(".") if match else []


def _check_config_files() -> None:
    """ml_collections turns a config file it cannot read into a value that raises ``OSError`` when first used:
    used here, so that it is raised while parsing."""
    config_flags = sys.modules.get("ml_collections.config_flags.config_flags")
    if config_flags is None:
        return
    from absl import flags

    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        if not isinstance(flag.parser, config_flags.ConfigFileFlagParser):
            continue
        getattr(flag.value, "keys", None)


def _flag_error(message: str) -> str:
    """absl's message in one line; a config file's error (absl quotes its traceback) by its last line."""
    head, sep, quoted = message.partition("Error whilst parsing config file:")
    if sep:
        last = quoted.strip().splitlines()[-1]
        return f"{head.strip().removeprefix('flag ')} {re.sub(r'^[A-Za-z]+(Error|Exception): ', '', last)}"
    return f"{one_line(message)} (--helpshort lists the flags)"


def _ml_collections_caller(error: BaseException) -> traceback.FrameSummary | None:
    """The frame whose call into ml_collections raised ``error``: this module's (ml_collections parsing the
    command line, through absl) or a config file's line; None where ml_collections did not raise it."""
    frames = list(traceback.walk_tb(error.__traceback__))
    packages = [_package(frame.f_code.co_filename) for frame, _ in frames]
    if packages[-1:] != ["ml_collections"]:
        return None
    callers = [i for i, package in enumerate(packages) if package is None]
    return traceback.StackSummary.extract(frames[callers[-1] : callers[-1] + 1])[0] if callers else None


def _package(filename: str) -> str | None:
    parts = filename.split(os.sep)
    return next((p for p in ("ml_collections", "absl") if p in parts), None)


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        for prefix in (f"--{name}=", f"-{name}="):
            if arg.startswith(prefix):
                return arg[len(prefix) :]
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            return argv[i + 1]
    return None


class _FirstLineOfLibraryErrors(logging.Filter):
    """Log records without their traceback, unless debugging; asyncio's "exception was never retrieved" (orbax
    leaves one per array of a checkpoint that a full disk stopped) not at all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if debugging():
            return True
        if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
            return False
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


_LOG_FILTER = _FirstLineOfLibraryErrors()


def _keep_first_line_of_library_errors() -> None:
    """On the handlers the command logs through (absl's, set up by ``app.run``), for the rest of the process."""
    for handler in logging.getLogger().handlers:
        if _LOG_FILTER not in handler.filters:
            handler.addFilter(_LOG_FILTER)
