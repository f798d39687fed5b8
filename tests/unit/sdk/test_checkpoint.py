"""Checkpoints are atomic: a process killed while writing one leaves the last good checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from phasegate.sdk.checkpoint import CheckpointCorrupt, CheckpointStore

NOW = datetime(2026, 5, 1, tzinfo=UTC)
BLOB = 4_000_000  # characters per checkpoint: big enough that writing takes real time

# A writer process. Each checkpoint's content is derived from its sequence number, so a
# restored checkpoint can be checked for being whole and for being the right one.
WRITER = textwrap.dedent(
    """
    import os, sys, time
    from datetime import datetime, timezone
    from phasegate.sdk.checkpoint import CheckpointStore

    directory, mode, stall_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = CheckpointStore(directory, "big")
    real_write, real_fsync = os.write, os.fsync

    def stall():
        print("STALLED", flush=True)
        time.sleep(3600)

    if mode == "stall-mid-write":
        def half_write(fd, data):
            if store.sequence + 1 == stall_at:
                real_write(fd, bytes(data[: len(data) // 2]))
                stall()
            return real_write(fd, data)
        os.write = half_write
    elif mode == "stall-before-rename":
        def slow_fsync(fd):
            real_fsync(fd)
            if store.sequence + 1 == stall_at and not os.path.isdir(f"/proc/self/fd/{fd}"):
                stall()
        os.fsync = slow_fsync

    def state(seq):
        return {"seq": seq, "blob": chr(65 + seq % 26) * BLOB_SIZE, "tail": seq}

    for seq in range(1, 10**6):
        if mode == "naive":
            # The control: write in place, the way that is NOT safe.
            import json
            doc = json.dumps({"format": 1, "sequence": seq, "state": state(seq)}).encode()
            with open(store.path, "wb") as fh:
                if seq == stall_at:
                    fh.write(doc[: len(doc) // 2]); fh.flush(); stall()
                fh.write(doc)
            store.sequence = seq
        else:
            store.save(state(seq), datetime.now(timezone.utc))
        print(seq, flush=True)
    """
).replace("BLOB_SIZE", str(BLOB))


def start_writer(directory: Path, mode: str, stall_at: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(directory), mode, str(stall_at)],
                            stdout=subprocess.PIPE, text=True)


def read_until(proc: subprocess.Popen, wanted) -> list[str]:
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line.strip())
        if wanted(line.strip()):
            return seen
    raise AssertionError(f"writer ended ({proc.wait()}) before the expected line; saw {seen[-5:]}")


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_whole(checkpoint, sequence: int) -> None:
    assert checkpoint.sequence == sequence
    assert checkpoint.state["seq"] == checkpoint.state["tail"] == sequence
    assert checkpoint.state["blob"] == chr(65 + sequence % 26) * BLOB


def test_round_trip_and_sequence(tmp_path):
    store = CheckpointStore(tmp_path, "s")
    assert store.load() is None
    store.save({"a": "1"}, NOW)
    store.save({"a": "2"}, NOW)
    again = CheckpointStore(tmp_path, "s")
    checkpoint = again.load()
    assert checkpoint.state == {"a": "2"} and checkpoint.sequence == 2 and checkpoint.written_at == NOW
    again.save({"a": "3"}, NOW)
    assert again.load().sequence == 3


def test_a_damaged_file_is_refused_not_trusted(tmp_path):
    store = CheckpointStore(tmp_path, "s")
    store.save({"cash": "100"}, NOW)
    document = json.loads(store.path.read_text())
    document["state"]["cash"] = "1000000"
    store.path.write_text(json.dumps(document))
    with pytest.raises(CheckpointCorrupt, match="checksum"):
        store.load()
    store.path.write_text('{"format": 1, "state": {"cash": "1')
    with pytest.raises(CheckpointCorrupt, match="not a readable checkpoint"):
        store.load()


@pytest.mark.parametrize("mode", ["stall-mid-write", "stall-before-rename"])
def test_a_writer_killed_midway_leaves_the_last_good_checkpoint(tmp_path, mode):
    writer = start_writer(tmp_path, mode, stall_at=3)
    try:
        seen = read_until(writer, lambda line: line == "STALLED")
    finally:
        kill(writer)
    assert seen == ["1", "2", "STALLED"]
    store = CheckpointStore(tmp_path, "big")
    leftovers = list(tmp_path.glob(".big.checkpoint.json.tmp-*"))
    assert leftovers, "the kill should have left the interrupted temp file behind"
    assert_whole(store.load(), 2)
    assert store.remove_stale_temp_files() == leftovers
    assert not list(tmp_path.glob(".big.checkpoint.json.tmp-*"))


def test_the_harness_catches_a_non_atomic_writer(tmp_path):
    writer = start_writer(tmp_path, "naive", stall_at=3)
    try:
        read_until(writer, lambda line: line == "STALLED")
    finally:
        kill(writer)
    with pytest.raises(CheckpointCorrupt):
        CheckpointStore(tmp_path, "big").load()


def test_kills_at_random_moments_always_leave_a_whole_checkpoint(tmp_path):
    rng = random.Random(1234)
    for attempt in range(5):
        directory = tmp_path / str(attempt)
        writer = start_writer(directory, "normal")
        try:
            wanted = rng.randint(1, 3)
            printed = read_until(writer, lambda line, wanted=wanted: line.isdigit() and int(line) >= wanted)
            # Not an assertion on timing: only a way to land the kill at varied points of the next write.
            time.sleep(rng.uniform(0, 0.05))
        finally:
            kill(writer)
        # Everything it printed before dying is still in the pipe: the last one is the last finished write.
        assert writer.stdout is not None
        printed += [line.strip() for line in writer.stdout if line.strip()]
        reported = int(printed[-1])
        checkpoint = CheckpointStore(directory, "big").load()
        # The last write it reported, or the next one if the kill came just after its rename.
        assert checkpoint is not None and checkpoint.sequence in (reported, reported + 1)
        assert_whole(checkpoint, checkpoint.sequence)
