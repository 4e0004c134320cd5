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
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

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
