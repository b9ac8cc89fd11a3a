"""Small helpers every writer and console line shares."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temp path in the target's folder; on success it is renamed onto `path`, so
    readers never see half a file; on an error it is removed. `suffix` keeps an extension
    for writers that choose the format by it (matplotlib)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def fmt_number(v) -> str:
    """A float in 4 significant digits; anything else as str (console, logs, reports)."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)
