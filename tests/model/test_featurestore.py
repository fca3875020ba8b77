"""The feature cache's SQLite store: shared by concurrent writers, robust to damage, torch-free."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import textwrap

from vitpipe.model.featurestore import FILENAME, FeatureStore

WRITER = textwrap.dedent("""
    import hashlib, sys
    from vitpipe.model.featurestore import FeatureStore
    root, first = sys.argv[1], int(sys.argv[2])
    store = FeatureStore(root)
    with store.writer("key", parts={"writer": first}) as write:  # as a backbone pass writes
        for batch in range(first, first + 150):  # 150 transactions of 20 entries; the writers overlap by half
            write([(f"{i:064x}", hashlib.sha256(str(i).encode()).digest() * 12)
                   for i in range(batch * 20, batch * 20 + 20)])
    sys.exit(1 if store.unusable else 0)
""")


def _value(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * 12  # 384 bytes: a 192-dim bf16 feature


def test_two_processes_write_at_once_and_every_entry_arrives_intact(tmp_path):
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(first)],
                                stderr=subprocess.PIPE, text=True) for first in (0, 75)]
    reader = FeatureStore(tmp_path)
    wanted = [f"{i:064x}" for i in range(225 * 20)]
    while any(w.poll() is None for w in writers):  # read while they write: never half an entry
        for image, data in reader.get("key", wanted).items():
            assert data == _value(int(image, 16))
    assert [w.wait() for w in writers] == [0, 0], [w.stderr.read() for w in writers]
    found = reader.get("key", wanted)
    assert len(found) == 225 * 20 and reader.count() == 225 * 20
    assert all(data == _value(int(image, 16)) for image, data in found.items())
    assert not reader.unusable and reader.damaged == 0


def test_keys_are_separate_and_missing_entries_are_absent(tmp_path):
    store = FeatureStore(tmp_path)
    assert store.get("a", ["x"]) == {}  # no file yet
    store.put("a", [("x", b"1"), ("y", b"2")], parts={})
    store.put("b", [("x", b"3")], parts={})
    assert store.get("a", ["x", "y", "z"]) == {"x": b"1", "y": b"2"}
    assert store.get("b", ["x", "y"]) == {"x": b"3"}
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]  # the WAL is folded back in on close


def test_a_damaged_entry_reads_as_missing(tmp_path):
    import sqlite3

    store = FeatureStore(tmp_path)
    store.put("a", [("x", b"\x01" * 8), ("y", b"\x02" * 8)], parts={})
    with sqlite3.connect(tmp_path / FILENAME) as conn:
        conn.execute("UPDATE features SET data = X'0000000000000000' WHERE image = 'x'")
    assert store.get("a", ["x", "y"]) == {"y": b"\x02" * 8} and store.damaged == 1


def test_a_file_that_is_not_a_database_is_stepped_around_with_one_warning(tmp_path, caplog):
    (tmp_path / FILENAME).write_bytes(b"not a database" * 100)
    store = FeatureStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vitpipe.model.featurestore"):
        assert store.get("a", ["x"]) == {}
        store.put("a", [("x", b"1")], parts={})
        assert store.get("a", ["x"]) == {}
    assert store.unusable and len(caplog.records) == 1
    assert "vitpipe cache --clear" in caplog.records[0].getMessage()
    assert (tmp_path / FILENAME).read_bytes() == b"not a database" * 100  # left as it was


def test_the_store_imports_no_torch():
    code = ("import sys, vitpipe.model.featurestore; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
