"""Checkpoints: the strategy's state on disk, written so that a kill never corrupts it.

A write goes to a temporary file in the same directory, is flushed and fsynced, then
renamed over the checkpoint (rename is atomic on POSIX), and the directory is fsynced
so the rename itself survives a crash. A process killed at any point leaves either the
previous checkpoint or the new one, never half of one. The payload also carries a
SHA-256 of its state, so a file damaged some other way is refused rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .clock import isoformat, parse_time

FORMAT = 1


class CheckpointCorrupt(Exception):
    pass


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    written_at: datetime
    state: dict[str, Any]


def _canonical(state: Mapping[str, Any]) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()


class CheckpointStore:
    def __init__(self, directory: Path, name: str) -> None:
        self.directory = Path(directory)
        self.name = name
        self.path = self.directory / f"{name}.checkpoint.json"
        self.sequence = 0

    def _temp_prefix(self) -> str:
        return f".{self.name}.checkpoint.json.tmp-"

    def save(self, state: Mapping[str, Any], now: datetime) -> Checkpoint:
        self.directory.mkdir(parents=True, exist_ok=True)
        sequence = self.sequence + 1
        body = _canonical(state)
        document = {
            "format": FORMAT,
            "name": self.name,
            "sequence": sequence,
            "writtenAt": isoformat(now),
            "sha256": hashlib.sha256(body).hexdigest(),
            "state": state,
        }
        data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        temp = self.directory / f"{self._temp_prefix()}{os.getpid()}-{sequence}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(temp, self.path)
        self._fsync_directory()
        self.sequence = sequence
        return Checkpoint(sequence, now, dict(state))

    def load(self) -> Checkpoint | None:
        """The last complete checkpoint, or None when there is none yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            document = json.loads(raw)
            state = document["state"]
            if document.get("format") != FORMAT:
                raise CheckpointCorrupt(f"{self.path}: unknown format {document.get('format')!r}")
            if hashlib.sha256(_canonical(state)).hexdigest() != document["sha256"]:
                raise CheckpointCorrupt(f"{self.path}: checksum mismatch")
            checkpoint = Checkpoint(int(document["sequence"]), parse_time(document["writtenAt"]), state)
        except CheckpointCorrupt:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorrupt(f"{self.path}: not a readable checkpoint ({exc})") from exc
        self.sequence = max(self.sequence, checkpoint.sequence)
        return checkpoint

    def remove_stale_temp_files(self) -> list[Path]:
        """Temp files left by a process killed mid-write: never read, safe to delete."""
        removed = []
        if self.directory.is_dir():
            for path in self.directory.glob(f"{self._temp_prefix()}*"):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
