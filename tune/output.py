"""Where the search's output goes: this project's own lines to the terminal (`say`), what the
libraries print -- Ray's status tables, the trials' forwarded output, their warnings, Optuna's
logs -- to results/<name>/driver.log (`library_output`); `--verbose` shows the latter on the
console as well (`set_verbose`). The lines themselves are tune/console.py's.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

_STATE: dict = {"verbose": False, "out": None, "err": None}  # --verbose; the terminal while routing


def set_verbose(on: bool) -> None:
    """--verbose: the libraries' output on the console as well as in driver.log, no live bar."""
    _STATE["verbose"] = bool(on)


def terminal(err: bool = False):
    """Where this project's own lines go: the real stdout (stderr), also while the libraries'
    output is routed to driver.log."""
    return _STATE["err" if err else "out"] or (sys.stderr if err else sys.stdout)


def verbose() -> bool:
    return _STATE["verbose"]


def say(message: str, err: bool = False) -> None:
    """One line of this project's on the console (above the live bar, if there is one)."""
    stream = terminal(err)
    tqdm.write(message, file=stream)
    stream.flush()


# -- the libraries' output -> driver.log ---------------------------------------------------

class _DriverLog(io.TextIOBase):
    """sys.stdout/sys.stderr while the libraries run: appends to driver.log (held in memory
    until the log's folder exists, so a refused search writes nothing), and with --verbose
    to the terminal too. Thread-safe: Ray forwards the trials' output from its own thread.
    Detached (the routing over), it writes to the terminal: a handler made while routing
    may still hold it."""

    def __init__(self, path: Path, term, verbose: bool):
        self.path, self.term, self.verbose = path, term, verbose
        self.pending: list[str] = []
        self.file = None
        self.lock = threading.Lock()
        self.detached = False

    def detach(self, term) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
            self.term, self.file, self.detached = term, None, True

    def write(self, text: str) -> int:
        with self.lock:
            if self.verbose or self.detached:
                self.term.write(text)
            if self.detached:
                return len(text)
            if self.file is None and self.path.parent.is_dir():
                self.file = open(self.path, "a", buffering=1, encoding="utf-8")
                self.file.write("".join(self.pending))
                self.pending.clear()
            (self.file.write(text) if self.file is not None else self.pending.append(text))
        return len(text)

    def flush(self) -> None:
        with self.lock:
            for s in (self.file, self.term if self.verbose or self.detached else None):
                if s is not None:
                    s.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # a library asking for the descriptor gets the terminal's
        return self.term.fileno()

    @property
    def encoding(self):
        return getattr(self.term, "encoding", "utf-8")


@contextmanager
def library_output(path: Path | None):
    """Route what the libraries print to `path` (driver.log) for the duration: sys.stdout and
    sys.stderr (Ray's status tables, the trials' forwarded output, Python warnings) and the
    logging handlers that write to the terminal (Ray's, Optuna's). This project's lines go to
    `terminal()`. path None (a remote experiment folder): nothing is routed."""
    if path is None or _STATE["out"] is not None:  # nested (a test's Ray, a confirmation): one route
        yield
        return
    term_out, term_err = sys.stdout, sys.stderr
    log = _DriverLog(Path(path), term_out, _STATE["verbose"])
    moved = _route_handlers({id(term_out), id(term_err), id(sys.__stdout__), id(sys.__stderr__)}, log)
    log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
    _STATE.update(out=term_out, err=term_err)
    sys.stdout = sys.stderr = log
    ok = False
    try:
        yield
        ok = True
    finally:
        sys.stdout, sys.stderr = term_out, term_err
        _STATE.update(out=None, err=None)
        for handler, stream in moved:
            handler.setStream(stream)
        attached = log.file is not None
        log.detach(term_err)
        if not attached and log.pending and not ok and not isinstance(sys.exc_info()[1], ValueError):
            # Failed before the experiment folder existed: what the libraries said may explain
            # it. (A ValueError here is this project's refusal of the input, which says why.)
            term_err.write("".join(log.pending))


LIBRARY_LOGGERS = ("ray", "optuna")  # their stream handlers print wherever they were made


def _route_handlers(terminal_ids: set[int], log) -> list:
    """Point the stream handlers of the libraries' loggers, and any handler writing to the
    terminal, at the log; returns (handler, old stream) to undo it."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    moved: dict[int, tuple] = {}  # one handler can serve several loggers: moved once
    for lg in loggers:
        library = lg.name.split(".")[0] in LIBRARY_LOGGERS
        for h in lg.handlers:
            if (id(h) not in moved and isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                    and h.stream is not log and (library or id(h.stream) in terminal_ids)):
                moved[id(h)] = (h, h.stream)
                h.setStream(log)
    return list(moved.values())
