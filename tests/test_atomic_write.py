"""atomic_write_bytes: a reader sees a whole file, and writers of the same file at once (the
lanes of a sweep writing its spec.json) never trip over each other's temp file."""

from __future__ import annotations

import os
import stat
import threading

from gapless.checkpoint import atomic_write_bytes, atomic_write_text


def test_concurrent_writers_of_one_file_all_succeed_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "spec.json"
    payloads = [(f"writer {i}\n" * 2000).encode() for i in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(payloads))

    def write(data: bytes) -> None:
        start.wait()
        try:
            for _ in range(40):
                atomic_write_bytes(path, data)
        except BaseException as exc:  # noqa: BLE001 (collected, asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_bytes() in payloads  # one writer's whole file, never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]


def test_the_file_gets_a_plain_open_s_permissions_and_a_failed_write_leaves_nothing(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "b.txt", "w") as f:
        f.write("x")
    modes = [stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in ("a.txt", "b.txt")]
    assert modes[0] == modes[1]
    target = tmp_path / "dir_in_the_way"
    target.mkdir()
    (target / "child").write_text("x")
    try:
        atomic_write_bytes(target, b"y")  # a non-empty folder cannot be replaced by a file
    except OSError:
        pass
    else:
        raise AssertionError("replacing a non-empty folder should fail")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "dir_in_the_way"]
