"""Crash-safe file writes shared by the generator, the metrics, the layouts and the reports."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def append_json_lines(path: Path, records: list[dict], sort_keys: bool = False) -> None:
    """Append one JSON line per record and fsync; a line a kill cut short is ended first, so no record joins it. An
    exclusive lock keeps the lines of two processes appending to one file whole."""
    with open(path, "a+b") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0, os.SEEK_END)
        if file.tell() > 0:
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")
        file.write("".join(json.dumps(record, sort_keys=sort_keys) + "\n" for record in records).encode("utf-8"))
        file.flush()
        os.fsync(file.fileno())


def read_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file, skipping lines a crash cut short; [] when the file does not exist."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
