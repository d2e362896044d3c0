"""launcher.shmclean: only new, unused MPI segments are removed."""
import mmap
import os

from launcher import shmclean


def test_removes_only_new_unused_mpi_segments(tmp_path):
    d = str(tmp_path)
    for name in ("mpich_shm_old", "vader_segment.old"):
        (tmp_path / name).write_bytes(b"x" * 16)
    before = shmclean.snapshot(d)
    assert before == {"mpich_shm_old", "vader_segment.old"}
    for name in ("mpich_shm_dead", "sm_segment.dead", "mpich_shm_mapped", "mpich_shm_open", "unrelated"):
        (tmp_path / name).write_bytes(b"x" * 4096)
    fd = os.open(tmp_path / "mpich_shm_mapped", os.O_RDWR)
    mapped = mmap.mmap(fd, 4096)
    os.close(fd)                                   # mapped but no descriptor left: still in use
    held = open(tmp_path / "mpich_shm_open", "rb")  # open descriptor: still in use
    try:
        removed = shmclean.remove_orphans(before, d)
    finally:
        mapped.close()
        held.close()
    assert sorted(removed) == ["mpich_shm_dead", "sm_segment.dead"]
    assert sorted(os.listdir(d)) == ["mpich_shm_mapped", "mpich_shm_old", "mpich_shm_open", "unrelated",
                                     "vader_segment.old"]
    assert shmclean.remove_orphans(shmclean.snapshot(d), d) == []      # nothing new: nothing to do


def test_missing_directory_is_harmless(tmp_path):
    assert shmclean.snapshot(str(tmp_path / "nope")) == set()
    assert shmclean.remove_orphans(set(), str(tmp_path / "nope")) == []


def test_since_removes_only_unused_segments_created_after_the_launch(tmp_path, capsys):
    """Other nodes of a multi-node job took no snapshot: there the launch's start time tells ours apart."""
    import time
    (tmp_path / "mpich_shm_before").write_bytes(b"x")
    time.sleep(0.05)
    since = time.time()
    time.sleep(0.05)
    for name in ("mpich_shm_after", "vader_segment.after", "mpich_shm_held", "unrelated_after"):
        (tmp_path / name).write_bytes(b"x")
    held = open(tmp_path / "mpich_shm_held", "rb")
    try:
        assert shmclean.main(["--since", repr(since), "--dir", str(tmp_path)]) == 0
    finally:
        held.close()
    assert sorted(os.listdir(tmp_path)) == ["mpich_shm_before", "mpich_shm_held", "unrelated_after"]
    assert "removed 2 shared-memory segment(s)" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert shmclean.main(["--since", repr(since), "--dir", str(empty), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
