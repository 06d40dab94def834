"""A command line run inside the test's process, as ``python -m MODULE ARGS`` runs it (imported, not
collected): its ``__main__`` block, flags and error boundary included, without a new interpreter's
seconds of imports. What it prints is the test's to capture (``capfd``)."""

from __future__ import annotations

import runpy
import sys
import warnings

from absl import app, flags

app.define_help_flags()  # absl's own flags, defined once per process: not the command's to remove


def run_command(module: str, *args: object) -> int:
    """The exit status of ``python -m module *args``; the flags and config modules it defined are removed
    afterwards (a process runs one command: absl refuses a flag defined twice, and ml_collections would load
    a config file into the module of the previous one)."""
    for name in loaded_config_files():  # one loaded before (another test's config flag): it would be reused
        del sys.modules[name]
    defined, parsed, argv, modules = set(flags.FLAGS), flags.FLAGS.is_parsed(), sys.argv, set(sys.modules)
    sys.argv = [module, *map(str, args)]
    try:
        with warnings.catch_warnings():  # the module imported already (by the test): its __main__ is a new copy
            warnings.filterwarnings("ignore", "'.*' found in sys.modules after import", RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # absl's app.run always ends with one
        return 0 if e.code is None else e.code
    finally:
        sys.argv = argv
        for name in set(flags.FLAGS) - defined:
            delattr(flags.FLAGS, name)
        if not parsed:
            flags.FLAGS.unparse_flags()
        for name in set(loaded_config_files()) - modules:
            del sys.modules[name]
    raise AssertionError(f"{module} returned without exiting")


def loaded_config_files() -> list[str]:
    """The modules ml_collections loaded config files into: ``--config`` as top-level module "config_config"."""
    return [name for name in sys.modules if "." not in name and name.endswith("_config")]


def one_error_line(stderr: str) -> str:
    """The boundary's line, checked to be the only one that says error and to come with no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]
