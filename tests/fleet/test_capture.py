"""fleet/capture.py: the console's capture key, created once even when replicas start together."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from edgeops.errors import FleetError
from edgeops.fleet.capture import KEY_FILE, load_or_create_key


def _key_bytes(folder: str) -> bytes:
    return bytes(load_or_create_key(Path(folder)))


def test_replicas_starting_together_on_one_folder_all_get_the_one_key(tmp_path):
    """Eight processes race to create the key (CI saw a replica die on another's O_EXCL file):
    every one returns the key that ended up on disk, and no temporary file is left."""
    folder = tmp_path / "capture"
    with multiprocessing.get_context("fork").Pool(8) as pool:
        keys = pool.map(_key_bytes, [str(folder)] * 8)
    assert len(set(keys)) == 1 and keys[0] == bytes(load_or_create_key(folder, create=False))
    assert sorted(os.listdir(folder)) == [KEY_FILE] and (folder / KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_an_existing_key_is_read_and_a_damaged_one_named(tmp_path):
    first = load_or_create_key(tmp_path)
    assert bytes(load_or_create_key(tmp_path)) == bytes(first)
    (tmp_path / KEY_FILE).write_bytes(b"not base64!\n")
    with pytest.raises(FleetError, match=f"{KEY_FILE}: not a capture key"):
        load_or_create_key(tmp_path)
    with pytest.raises(FleetError, match="no capture key"):
        load_or_create_key(tmp_path / "empty", create=False)
