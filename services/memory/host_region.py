"""The host tier's bytes: one shared-memory file, mapped by the memory service and by engines.

Why a file under /dev/shm and not multiprocessing.shared_memory: engines attach by path, and on
Python 3.11 an attaching process registers the segment with its resource tracker, which unlinks it
when that process exits, pulling the region from under the service. A plain tmpfs file + mmap has
no tracker, and `docker compose` shares it through `ipc: service:memory` or a shared /dev/shm.

    offset 0                     HEADER_BYTES
    [ magic | token (16 B) | 0 ... ][ slot 0 ][ slot 1 ] ... [ slot N-1 ]
                                    ^ first_slot_offset_bytes; slot i at HEADER_BYTES + i * slot_bytes

The token is random per service start. An engine that reads, at the path it was given, the token
it was told over gRPC is on the same host and maps the same region; otherwise it falls back to the
streamed transfer (a stale file of a previous run has another token).
"""

from __future__ import annotations

import mmap
import os
import secrets
import tempfile
from pathlib import Path

MAGIC = b"ALISEKV1"
TOKEN_BYTES = 16
HEADER_BYTES = 4096  # one page, so slot 0 is page-aligned
# Owner-only: the region holds every swapped request's KV (prompt content, recoverable from it). Engines
# map it as the same user (compose: one uid and `ipc: service:memory`); no one else may read it.
REGION_FILE_MODE = 0o600


REGION_FILE_PREFIX = "alise-host-tier-"


def default_region_path() -> Path:
    """A fresh path in /dev/shm (tmpfs) when the host has one, else the temp dir. Region files
    of memory services that died without cleaning up (killed) are removed first: their pid, in the
    name, no longer runs."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    for stale in base.glob(f"{REGION_FILE_PREFIX}*"):
        pid = stale.name.removeprefix(REGION_FILE_PREFIX).split("-")[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            stale.unlink(missing_ok=True)
    return base / f"{REGION_FILE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class HostRegion:
    """The memory service's mapping of the region; owns (creates and unlinks) the file."""

    def __init__(self, path: Path, num_slots: int, slot_bytes: int) -> None:
        if slot_bytes <= 0 or num_slots < 0:
            raise ValueError(f"need slot_bytes > 0 and num_slots >= 0, got {slot_bytes}, {num_slots}")
        self.path = path
        self.slot_bytes = slot_bytes
        self.num_slots = num_slots
        self.size_bytes = HEADER_BYTES + num_slots * slot_bytes
        self.token = secrets.token_bytes(TOKEN_BYTES)
        # A new file, never the old one truncated in place: engines may still map a previous
        # service's file at this path, and truncating it under them would fault their copies.
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, REGION_FILE_MODE)
        try:
            os.fchmod(descriptor, REGION_FILE_MODE)  # exactly 0600, whatever the umask left or added
            os.ftruncate(descriptor, self.size_bytes)  # sparse: pages are taken only when written
            self._map = mmap.mmap(descriptor, self.size_bytes)
        finally:
            os.close(descriptor)
        self._map[: len(MAGIC) + TOKEN_BYTES] = MAGIC + self.token
        self._view = memoryview(self._map)

    @property
    def first_slot_offset_bytes(self) -> int:
        return HEADER_BYTES

    def slot_offset(self, slot_id: int) -> int:
        return HEADER_BYTES + slot_id * self.slot_bytes

    def write(self, slot_ids: list[int], offset_bytes: int, data: bytes | memoryview) -> None:
        """Writes data at byte offset_bytes of the record whose bytes run through slot_ids."""
        for _slot_id, start, view_start, length in self._pieces(slot_ids, offset_bytes, len(data)):
            self._view[start : start + length] = data[view_start : view_start + length]

    def read(self, slot_ids: list[int], offset_bytes: int, num_bytes: int) -> bytes:
        """Reads num_bytes from byte offset_bytes of the record whose bytes run through slot_ids."""
        return b"".join(
            bytes(self._view[start : start + length])
            for _, start, _, length in self._pieces(slot_ids, offset_bytes, num_bytes)
        )

    def _pieces(self, slot_ids: list[int], offset_bytes: int, num_bytes: int):
        """(slot, region offset, offset within the data, length) of each slot a byte range touches."""
        if offset_bytes < 0 or offset_bytes + num_bytes > len(slot_ids) * self.slot_bytes:
            raise ValueError(f"bytes [{offset_bytes}, {offset_bytes + num_bytes}) exceed {len(slot_ids)} slots")
        done = 0
        while done < num_bytes:
            index, within = divmod(offset_bytes + done, self.slot_bytes)
            length = min(self.slot_bytes - within, num_bytes - done)
            yield slot_ids[index], self.slot_offset(slot_ids[index]) + within, done, length
            done += length

    def close(self) -> None:
        """Unmaps and unlinks the file (engines' mappings stay valid until they close them)."""
        self._view.release()
        self._map.close()
        self.path.unlink(missing_ok=True)
