"""The embedded engine: Store and Volume without a daemon."""

import os
import threading
import time

import pytest

import dms

MIB = 1 << 20


@pytest.fixture
def store(images):
    cow = images("cow.img", 64 * MIB)
    origin = images("origin.img", 8 * MIB)
    with dms.Store.format(cow) as st:
        st.bind("orig", origin)
        yield st


def test_format_open_bind_and_context_managers(images):
    cow = images("cow.img", 32 * MIB)
    origin = images("origin.img", 4 * MIB)
    with dms.Store.format(cow, chunk_pages=4) as st:
        assert st.status().chunk_pages == 4
        st.bind("orig", origin)
        with st.volume("orig") as v:
            assert v.size == 4 * MIB and v.tag == 0 and not v.closed
            v.write(0, b"abc")
            v.flush()
        assert v.closed
        with pytest.raises(ValueError):
            v.read(0, 1)
    assert st.closed
    with pytest.raises(ValueError):
        st.origins()
    with dms.Store.open(cow) as st:
        assert st.origins() == ["orig"]
        st.attach("orig", origin)
        with st.volume("orig") as v:
            assert v.read(0, 3) == b"abc"


def test_snapshots_versions_and_buffers(store):
    with store.volume("orig") as o:
        o.write(0, b"A" * 8192)
        t1 = store.snapshot("orig", memo="first")
        o.write(0, bytearray(b"B" * 4096))
        t2 = store.snapshot("orig", t1, memo="child")
        with store.volume("orig", t2) as s2:
            s2.write(100, memoryview(b"xxCCCCyy")[2:6])
            assert s2.read(98, 8) == b"AACCCCAA"
        with store.volume("orig", t1) as s1:
            assert s1.read(0, 8192) == b"A" * 8192
        assert o.read(0, 4) == b"BBBB"
        o.discard(0, 4096)
        assert o.read(0, 4096) == bytes(4096)
    vs = store.versions("orig")
    assert [(v.tag, v.parent_tag, v.memo) for v in vs] == [(0, None, ""), (1, 0, "first"), (2, 1, "child")]
    assert all(isinstance(v, dms.Version) for v in vs)
    assert "memo='first'" in repr(vs[1]) or 'memo="first"' in repr(vs[1])
    assert store.tags("orig") == [1, 2]


def test_rollback_delete_clean_check(store):
    with store.volume("orig") as o:
        o.write(0, b"1" * 4096)
        t = store.snapshot("orig")
        o.write(0, b"2" * 4096)
    store.rollback("orig", t)
    with store.volume("orig") as o:
        assert o.read(0, 4096) == b"1" * 4096
    before = store.status().used_chunks
    store.delete("orig", t)
    removed, freed = store.clean()
    assert removed >= 1 and freed >= 1
    assert store.status().used_chunks < before
    report = store.check()
    assert report.clean and report.problems == [] and isinstance(report, dms.CheckReport)
    store.unbind("orig")
    assert store.origins() == []


def test_every_error_kind(images, store):
    with pytest.raises(dms.NotFoundError):
        store.volume("nope")
    with pytest.raises(dms.NotFoundError):
        store.snapshot("orig", 42)
    with pytest.raises(dms.InvalidArgumentError) as e:
        store.delete("orig", 0)
    assert isinstance(e.value, ValueError) and isinstance(e.value, dms.DmsError)
    with pytest.raises(dms.InvalidArgumentError):
        store.snapshot("orig", memo="m" * 2000)
    with pytest.raises(dms.InvalidArgumentError):
        dms.Store.format(images("bad.img", 16 * MIB), chunk_pages=3)
    with pytest.raises(dms.AlreadyExistsError):
        store.bind("orig", images("o2.img", MIB))
    with pytest.raises(dms.AlreadyExistsError):
        dms.Store.format(images("twice.img", 16 * MIB)).close() or dms.Store.format(str(store.path).replace("cow", "twice"))
    t = store.snapshot("orig")
    with pytest.raises(dms.BusyError):
        store.unbind("orig")
    with pytest.raises(dms.IOFailure) as e:
        dms.Store.open(str(store.path))  # the device is locked by this store
    assert isinstance(e.value, OSError)
    with pytest.raises(dms.CorruptError):
        dms.Store.open(images("empty.img", 16 * MIB))
    with store.volume("orig", t) as v:
        with pytest.raises(dms.InvalidArgumentError):
            v.read(v.size - 1, 2)
    # A full COW device: NoSpaceError, also an OSError with errno ENOSPC.
    with dms.Store.format(images("small.img", 2 * MIB)) as small:
        small.bind("o", images("big.img", 8 * MIB))
        small.snapshot("o")
        with small.volume("o") as o:
            with pytest.raises(dms.NoSpaceError) as e:
                for off in range(0, 8 * MIB, 4096):
                    o.write(off, b"z" * 4096)
        assert e.value.errno == 28 and isinstance(e.value, OSError)
        assert small.status().full
    for cls in (dms.LimitError, dms.StoreFailedError, dms.UsageError, dms.DaemonError):
        assert issubclass(cls, dms.DmsError)


def test_threads_write_several_volumes_at_once(store):
    tags = [store.snapshot("orig", memo=f"s{i}") for i in range(3)]
    vols = [store.volume("orig", 0)] + [store.volume("orig", t) for t in tags]
    errors = []

    def worker(i, v):
        try:
            pat = bytes([i + 1]) * 65536
            for k in range(32):
                v.write((k * 65536 * 4 + i * 65536) % v.size, pat)
            for k in range(32):
                assert v.read((k * 65536 * 4 + i * 65536) % v.size, 65536) == pat
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i, v)) for i, v in enumerate(vols)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for v in vols:
        v.close()
    assert store.check().clean


def test_io_releases_the_gil(images):
    """While one thread is inside a long write, another Python thread runs."""
    with dms.Store.format(images("cow.img", 512 * MIB)) as st:
        st.bind("o", images("o.img", 128 * MIB))
        st.snapshot("o")
        with st.volume("o") as v:
            data = os.urandom(1 << 20) * 64
            done = threading.Event()
            ticks = 0

            def writer():
                v.write(0, data)  # 64 MiB of first writes: copy-outs and a commit
                done.set()

            t = threading.Thread(target=writer)
            start = time.perf_counter()
            t.start()
            while not done.is_set():
                ticks += 1
                time.sleep(0.001)
            t.join()
            elapsed = time.perf_counter() - start
    # With the GIL held for the whole write, the loop could not have run.
    assert elapsed > 0.05
    assert ticks >= 10, f"only {ticks} ticks in {elapsed:.3f}s"


def test_seed_usage_example_embedded(images):
    """The seed's example, with byte patterns in place of files."""
    cow, origin = images("sdc1.img", 64 * MIB), images("sdb1.img", 16 * MIB)
    orig_mark, snap1_mark, snap2_mark, after_mark = 0, 4096, 8192, 12288

    def has(v, *marks):
        return [v.read(m, 4) != bytes(4) for m in (orig_mark, snap1_mark, snap2_mark, after_mark)] == [
            m in marks for m in (orig_mark, snap1_mark, snap2_mark, after_mark)
        ]

    with dms.Store.format(cow, force=True) as st:
        st.bind("sdb1", origin)
        with st.volume("sdb1") as o:
            o.write(orig_mark, b"orig")
        t1 = st.snapshot("sdb1", memo="snap1")
        with st.volume("sdb1", t1) as s1:
            s1.write(snap1_mark, b"snp1")
            assert has(s1, orig_mark, snap1_mark)
        t2 = st.snapshot("sdb1", t1, memo="snap2")
        with st.volume("sdb1", t2) as s2:
            s2.write(snap2_mark, b"snp2")
            assert has(s2, orig_mark, snap1_mark, snap2_mark)
        assert [(v.tag, v.memo) for v in st.versions("sdb1")] == [(0, ""), (1, "snap1"), (2, "snap2")]
        st.rollback("sdb1", t2)
        with st.volume("sdb1") as o:
            assert has(o, orig_mark, snap1_mark, snap2_mark)
            o.write(after_mark, b"aftr")
        with st.volume("sdb1", t1) as s1:
            assert has(s1, orig_mark, snap1_mark)
    # The origin device itself holds the result.
    with open(origin, "rb") as f:
        raw = f.read(16384)
    assert raw[orig_mark : orig_mark + 4] == b"orig" and raw[after_mark : after_mark + 4] == b"aftr"
    assert raw[snap1_mark : snap1_mark + 4] == b"snp1" and raw[snap2_mark : snap2_mark + 4] == b"snp2"


def test_a_failed_commit_fails_the_store(tmp_path, images):
    """A COW device whose filesystem fills up: the copy-outs that hit it are
    IOFailure (an OSError), and a commit that cannot write its metadata (the
    filesystem full, or turned read-only by an error) fails the store: every
    call after that is StoreFailedError until it is reopened."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small ext4")
    img = str(tmp_path / "fs.img")
    with open(img, "wb") as f:
        f.truncate(12 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", img], check=True)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", img, str(small)], check=True)
    st = None
    try:
        dev = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(small)], check=True, capture_output=True, text=True
        ).stdout.strip()
        cow = str(small / "cow.img")
        with open(cow, "wb") as f:
            f.truncate(64 * MIB)  # sparse: the filesystem runs out long before the file does
        st = dms.Store.format(cow)
        st.bind("o", images("o.img", 32 * MIB))
        st.snapshot("o")
        failures = 0
        with st.volume("o") as v:
            for k in range(4096):
                try:
                    v.write(k * 4096, b"x" * 4096)
                except dms.IOFailure as e:
                    # A copy-out that hits the full filesystem.
                    assert isinstance(e, OSError)
                    failures += 1
                except dms.StoreFailedError:
                    # Or the committer's commit hit it first.
                    failures += 1
                    break
            assert failures > 0
        # The filesystem under the COW device fails and turns read-only.
        with open(f"/sys/fs/ext4/{os.path.basename(dev)}/trigger_fs_error", "w") as f:
            f.write("test")
        # A snapshot always commits metadata: here the commit cannot write.
        with pytest.raises((dms.IOFailure, dms.StoreFailedError)):
            st.snapshot("o")
        with pytest.raises(dms.StoreFailedError):
            st.snapshot("o")
        with pytest.raises(dms.StoreFailedError):
            with st.volume("o") as v:
                v.write(0, b"y")
        assert st.status().valid is False
    finally:
        if st is not None:
            try:
                st.close()
            except Exception:
                pass
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_held_writes_are_bounded_and_reach_the_origin_on_flush(images):
    cow = images("cow.img", 64 * MIB)
    origin = images("origin.img", 8 * MIB)
    with dms.Store.format(cow) as st:
        st.bind("orig", origin)
        assert st.held_limit == 64 * MIB
        st.held_limit = 64 * 1024
        assert st.held_limit == 64 * 1024
        st.snapshot("orig")
        with st.volume("orig") as o:
            for k in range(256):
                o.write(k * 4096, bytes([k]) * 4096)
            chunks, held, peak = st.held()
            # Writers waited at the bound (a request may pass it by a chunk or so).
            assert peak >= 64 * 1024 and peak < 64 * 1024 + 4 * 4096 + 1024
            assert o.read(255 * 4096, 4096) == bytes([255]) * 4096
            o.flush()
        assert st.held()[0] == 0
    with open(origin, "rb") as f:
        f.seek(200 * 4096)
        assert f.read(4096) == bytes([200]) * 4096
