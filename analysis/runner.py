"""What every rule script does around its one call: log to the rule's log, report errors in one line.

A script is::

    with rule_log(snakemake.log[0]):
        some_function(...)

Inside the block stderr and the ``logging`` module write to the log file. A ``PipelineError`` (bad
input, bad config) is written to the log and to the console as one line naming the path or key, and
the script exits with status 1; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Mapping

from analysis.errors import PipelineError


@contextlib.contextmanager
def rule_log(path: str | Path) -> Iterator[None]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    console = sys.stderr
    with open(path, "w", encoding="utf-8", buffering=1) as handle:
        sys.stderr = handle
        # File descriptor 2 too, so that compilers and other child processes (DeepSpeed probes its
        # optional ops with the C toolchain) write to the log rather than to the console.
        console.flush()
        saved_fd = os.dup(2)
        os.dup2(handle.fileno(), 2)
        root = logging.getLogger()
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except PipelineError as exc:
            message = f"ERROR: {exc}"
            print(message, file=handle)
            os.dup2(saved_fd, 2)  # the console again, for the one-line message
            print(message, file=console)
            raise SystemExit(1) from None
        except Exception:
            # A bug, not bad input: keep the traceback, in the log and (re-raised) on the console.
            import traceback

            traceback.print_exc(file=handle)
            os.dup2(saved_fd, 2)
            raise
        finally:
            root.removeHandler(handler)
            sys.stderr = console
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


@contextlib.contextmanager
def job_settings(threads: int | None = None, env: dict[str, str] | None = None) -> Iterator[None]:
    """Torch's thread count (``threads``) and environment defaults (``env``: a variable already set is
    left as it is) for the duration of a job's function, put back afterwards.

    A rule's job is a process of its own, where restoring changes nothing; a caller in a longer
    process (a test, a notebook, a tool that runs several functions) finds its settings as they were.
    Libraries that read a variable once (the tokenizers' thread pool, RAYON_NUM_THREADS) keep what
    they read.
    """
    saved_env = {key: os.environ.get(key) for key in (env or {})}
    for key, value in (env or {}).items():
        os.environ.setdefault(key, value)
    saved_threads = None
    if threads:
        import torch  # only where a thread count is set: the data jobs pass none and need no torch

        saved_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if saved_threads is not None:
            import torch

            torch.set_num_threads(saved_threads)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def restored_environment() -> Iterator[None]:
    """The environment as it was before the block, whatever the block, or a library it starts (Ray
    sets PYTHONPATH and its own variables in the process that starts it), changed."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def restores_job_settings(torch_threads: bool = True, env: Callable[[Mapping], dict] | None = None):
    """Decorate a job's function so that it runs inside ``job_settings``: torch's threads from its
    ``threads`` argument (when ``torch_threads``), environment defaults from ``env(arguments)``."""

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            with job_settings(arguments.get("threads") if torch_threads else None,
                              env(arguments) if env else None):
                return function(*args, **kwargs)

        return wrapper

    return decorate
