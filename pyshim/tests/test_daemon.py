"""The daemon functions, as the dms command drives the daemon."""

import os
import subprocess

import pytest

import dms

MIB = 1 << 20


def test_every_function(daemon, images):
    origin, cow = images("o.img", 16 * MIB), images("c.img", 64 * MIB)
    dev = dms.create("orig", origin, cow, bind=True, force_format=True)
    assert dev.name == "orig" and dev.path.endswith("/mapper/orig") and dev.loop is None
    with open(dev.path, "r+b") as f:
        f.write(b"X" * 4096)
        f.flush()
        os.fsync(f.fileno())
    t1 = dms.snapshot("orig", memo="one")
    t2 = dms.snapshot("orig", t1, memo="two")
    t3 = dms.message("orig", "so -m 'three words'")
    assert (t1, t2, t3) == (1, 2, 3)
    snap = dms.create("snap1", origin, cow, t1, read_only=True)
    with open(snap.path, "rb") as f:
        assert f.read(4096) == b"X" * 4096
    info = dms.list()
    assert len(info) == 1 and isinstance(info[0], dms.OriginInfo)
    rows = {s.tag: s for s in info[0].snapshots}
    assert rows[0].memo == "ORIGIN" and rows[0].dm_dev == "orig"
    assert rows[1].dm_dev == "snap1" and rows[2].parent == 1 and rows[3].memo == "three words"
    assert info[0].cow_status == "valid" and info[0].chunk_pages == 1
    st = dms.status()
    assert {s.dm_dev for s in st} == {"orig", "snap1"} and all(isinstance(s, dms.DeviceStatus) for s in st)
    assert dms.status("orig")[0].used_versions == 4
    assert "cs" in dms.table("snap1")
    dms.delete("orig", t3)
    dms.settle()
    assert dms.list("orig")[0].cleaning is False
    dms.remove("orig")
    dms.rollback("snap1", t2, background=True)
    dms.settle()
    dms.create("orig", origin, cow)
    dms.remove("snap1")
    for t in (t1, t2):
        dms.delete("orig", t)
    dms.settle()
    dms.delete("orig")
    assert dms.list() == []


def test_errors_from_the_daemon(daemon, images):
    origin, cow = images("o.img", 16 * MIB), images("c.img", 64 * MIB)
    dms.create("orig", origin, cow, bind=True, force_format=True)
    with pytest.raises(dms.AlreadyExistsError):
        dms.create("orig", origin, cow)
    with pytest.raises(dms.NotFoundError):
        dms.snapshot("orig", 9)
    with pytest.raises(dms.NotFoundError):
        dms.remove("nothing")
    with pytest.raises(dms.InvalidArgumentError):
        dms.message("orig", "ds 0")
    with pytest.raises(dms.UsageError):
        dms.message("orig", "frobnicate")
    with pytest.raises(dms.UsageError):
        dms.create("x", origin, cow, bind=True, format=True, chunk_size=3)
    with pytest.raises(dms.NotFoundError):
        dms.create("x", "/nonexistent/disk", cow)
    dms.snapshot("orig")
    with pytest.raises(dms.BusyError):
        dms.delete("orig")
    with open(dms.create("held", origin, cow, 1).path, "rb"):
        with pytest.raises(dms.BusyError):
            dms.remove("held")
    with pytest.raises(dms.DmsError):
        dms.rollback("orig", 1)  # the origin's dm_dev is exposed


def _loop_ready():
    return os.path.exists("/dev/loop-control") and subprocess.run(["sh", "-c", "command -v mkfs.ext4"]).returncode == 0


def test_seed_usage_example_through_the_daemon(daemon, images, mounts, tmp_path):
    if not _loop_ready():
        pytest.skip("no loop devices or mkfs.ext4")
    origin, cow = images("sdb1.img", 128 * MIB), images("sdc1.img", 256 * MIB)
    orig = dms.create("orig", origin, cow, bind=True, force_format=True, loop=True)
    subprocess.run(["mkfs.ext4", "-q", orig.loop], check=True)
    m_orig = mounts(orig.loop, tmp_path / "orig")
    (m_orig / "this-is-orig").touch()
    dms.snapshot("orig", memo="snap1")
    m1 = mounts(dms.create("snap1", origin, cow, 1, loop=True).loop, tmp_path / "snap1")
    (m1 / "this-is-snap1").touch()
    dms.snapshot("orig", 1, memo="snap2")
    m2 = mounts(dms.create("snap2", origin, cow, 2, loop=True).loop, tmp_path / "snap2")
    (m2 / "this-is-snap2").touch()
    names = lambda d: sorted(p.name for p in d.iterdir() if p.name != "lost+found")  # noqa: E731
    assert names(m2) == ["this-is-orig", "this-is-snap1", "this-is-snap2"]
    rows = [(s.tag, s.dm_dev, s.memo) for s in dms.list()[0].snapshots]
    assert rows == [(0, "orig", "ORIGIN"), (1, "snap1", "snap1"), (2, "snap2", "snap2")]
    mounts.umount(m_orig)
    dms.remove("orig")
    dms.rollback("snap2", 2)
    m_orig = mounts(dms.create("orig", origin, cow, loop=True).loop, tmp_path / "orig")
    (m_orig / "this-is-orig-after-rollback").touch()
    assert names(m_orig) == ["this-is-orig", "this-is-orig-after-rollback", "this-is-snap1", "this-is-snap2"]
    for m in (m_orig, m1, m2):
        mounts.umount(m)
    dms.remove_all()
    direct = mounts(f"-oloop,ro", tmp_path / "direct") if False else None
    subprocess.run(["mount", "-o", "loop,ro", origin, str(tmp_path / "orig")], check=True)
    try:
        assert names(tmp_path / "orig") == [
            "this-is-orig",
            "this-is-orig-after-rollback",
            "this-is-snap1",
            "this-is-snap2",
        ]
    finally:
        subprocess.run(["umount", str(tmp_path / "orig")], check=True)
    assert direct is None


def test_shutdown_returns_once_the_daemon_has_ended(daemon, images):
    origin, cow = images("o.img", 16 * MIB), images("c.img", 64 * MIB)
    dev = dms.create("orig", origin, cow, bind=True, force_format=True)
    dms.snapshot("orig")
    with open(dev.path, "r+b") as f:
        f.write(b"H" * (1 * MIB))  # held, not flushed
    with open(os.path.join(str(daemon), "daemon.pid")) as f:
        pid = int(f.read().strip())
    dms.shutdown()
    # Ended: no such process, or a zombie with no thread left.
    try:
        with open(f"/proc/{pid}/stat") as f:
            ended = f.read().rsplit(") ", 1)[-1][:1] == "Z" and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        ended = True
    assert ended, "dms.shutdown returned before the daemon ended"
    with open(origin, "rb") as f:
        assert f.read(1 * MIB) == b"H" * (1 * MIB), "held writes not on the origin"
