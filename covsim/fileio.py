"""Files written so that nothing half-written is ever read: atomic, fsynced writes, and the
canonical JSON text whose hash identifies a config or a sweep cell.

    atomic_write_text(path, text)   temp file in the same folder, fsync, os.replace
    canonical_json(x) / digest(x)   sorted-key compact JSON of plain data, and its sha256

Temp names start with `TMP_PREFIX`; `remove_temps` clears what an interrupted writer left.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

TMP_PREFIX = ".covsim-tmp-"


def canonical_json(x: Any) -> str:
    """Sorted-key, compact JSON of plain data (dicts, lists, str, numbers, bools, None)."""
    return json.dumps(x, sort_keys=True, separators=(",", ":"))


def digest(x: Any) -> bytes:
    """sha256 of `canonical_json(x)`: equal data, equal digests."""
    return hashlib.sha256(canonical_json(x).encode()).digest()


def atomic_write_text(path: str | Path, text: str | bytes) -> None:
    """Write `text` (or bytes) to `path` via a temp file in the same directory and
    `os.replace`: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}"
    try:
        write_synced(tmp, text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_synced(path: Path, data: str | bytes) -> None:
    # "x": a fresh file, mode from the umask
    with open(path, "xb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def remove_temps(directory: Path) -> list[str]:
    """Delete what interrupted writers left in `directory` (names starting with TMP_PREFIX)."""
    removed = []
    for p in Path(directory).glob(TMP_PREFIX + "*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p.name)
    return removed
