"""Files written whole or not at all: every saved result, sidecar, voice and job file goes through here."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

PARTIAL_SUFFIX = ".partial"


@contextmanager
def atomic_file(path: Path, mode: str = "wb", *, make_parents: bool = True) -> Iterator[IO]:
    """Write `path` whole or not at all: a hidden temporary file beside it, fsync, then rename over it.

    A crash at any point leaves either no file or the complete file (plus, at worst, a `.partial`
    that start-up and the hourly sweep remove), never a truncated one.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
