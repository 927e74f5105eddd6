"""The simulated file catalogue, as in the original service's storage-less mode.

A file is available when `file_id % 7 == 0`. Its bytes are generated from its id, so any
artifact can be checked byte for byte by anyone who imports this module.
"""

from __future__ import annotations

import random

from .settings import Settings

KiB = 1024
MIN_FILE_SIZE = 16 * KiB
MAX_FILE_SIZE = 1024 * KiB


def is_available(file_id: int) -> bool:
    return file_id % 7 == 0


def file_size(file_id: int) -> int:
    """Between 16 KiB and 1 MiB, fixed per id."""
    return MIN_FILE_SIZE + (file_id * 7919) % (MAX_FILE_SIZE - MIN_FILE_SIZE + 1)


def file_bytes(file_id: int) -> bytes:
    # Seeded Mersenne Twister: stable across Python versions and fast (C implementation).
    return random.Random(file_id).randbytes(file_size(file_id))


def file_name(file_id: int) -> str:
    """The name a file has inside a job's zip."""
    return f"file-{file_id}.bin"


def object_key(file_id: int) -> str:
    """Where the original service kept a single file (reported by /v1/download/check)."""
    return f"files/{file_id}.bin"


def draw_delay_s(settings: Settings, rng: random.Random | None = None) -> float:
    """How long fetching a job's files takes: drawn once per job (or synchronous request) from
    [DOWNLOAD_DELAY_MIN_MS, DOWNLOAD_DELAY_MAX_MS], on the TIME_SCALE clock."""
    if not settings.DOWNLOAD_DELAY_ENABLED:
        return 0.0
    ms = (rng or random).uniform(settings.DOWNLOAD_DELAY_MIN_MS, settings.DOWNLOAD_DELAY_MAX_MS)
    return settings.scaled(ms / 1000)


# What zipfile adds around each member the worker stores (ZIP_STORED into a stream it cannot seek,
# so each member has a data descriptor): local header, data descriptor, central directory entry.
_ZIP_LOCAL_HEADER = 30
_ZIP_DATA_DESCRIPTOR = 16
_ZIP_CENTRAL_ENTRY = 46
_ZIP_END_RECORD = 22


def archive_size(file_ids: list[int]) -> int:
    """The exact size of the zip a job with these ids builds (worker/tasks.py), known before any work:
    what initiate checks against MAX_JOB_BYTES. (Below 4 GiB: no zip64 records.)"""
    size = _ZIP_END_RECORD
    for file_id in filter(is_available, file_ids):
        name = len(file_name(file_id).encode())
        size += _ZIP_LOCAL_HEADER + name + file_size(file_id) + _ZIP_DATA_DESCRIPTOR + _ZIP_CENTRAL_ENTRY + name
    return size
