"""Space accounting and pruning from Python."""

import os

import dms

MIB = 1 << 20


def test_embedded_usage(images):
    s = dms.Store.format(images("c.img", 16 * MIB))
    s.bind("o", images("o.img", 4 * MIB))
    o = s.volume("o")
    t1 = s.snapshot("o")
    o.write(0, b"x" * 3 * 4096)
    t2 = s.snapshot("o")
    o.write(5 * 4096, b"y" * 2 * 4096)
    u = s.usage("o")
    rows = {r["tag"]: r for r in u["tags"]}
    assert u["chunks"] == 5 and u["pending_free"] == 0
    assert rows[t1]["owned"] == 3 and rows[t1]["freed_if_deleted"] == 3
    assert rows[t2]["owned"] == 2 and rows[t2]["shared"] == 2 and rows[t2]["freed_if_deleted"] == 0
    s.delete("o", t2)
    assert s.usage("o")["pending_free"] == 0, "t2's copies pass to t1"
    s.close()


def test_daemon_du_and_prune(daemon, images):
    origin, cow = images("o.img", 4 * MIB), images("c.img", 16 * MIB)
    dev = dms.create("orig", origin, cow, bind=True, format=True)
    for i in range(4):
        with open(dev.path, "r+b") as f:
            f.seek(i * 4096)
            f.write(bytes([i + 1]) * 4096)
            f.flush()
            os.fsync(f.fileno())
        dms.snapshot("orig")
    u = dms.du("orig")
    assert [r["tag"] for r in u["tags"]] == [1, 2, 3, 4]
    assert all(r["owned"] == 1 for r in u["tags"][:-1])
    dms.create("keep1", origin, cow, 1, read_only=True)
    assert dms.prune("orig", keep_last=1, dry_run=True) == [2, 3]
    assert dms.prune("orig", keep_last=1) == [2, 3]
    assert [s.tag for s in dms.list("orig")[0].snapshots] == [0, 1, 4]
    assert dms.prune("orig", keep_last=0, keep_within=3600) == []


def test_grow(images, daemon):
    cow = images("cg.img", 2 * MIB)
    s = dms.Store.format(cow)
    s.bind("o", images("og.img", 4 * MIB))
    assert s.grow() == (2 * MIB, 2 * MIB)
    os.truncate(cow, 8 * MIB)
    assert s.grow() == (2 * MIB, 8 * MIB)
    assert s.status().total_chunks == 8 * MIB // 4096
    s.close()
    origin, cow2 = images("o2.img", 4 * MIB), images("c2.img", 2 * MIB)
    dms.create("g", origin, cow2, bind=True, format=True)
    os.truncate(cow2, 4 * MIB)
    assert dms.grow("g") == (2 * MIB, 4 * MIB)


def test_policy(images, daemon):
    s = dms.Store.format(images("cp.img", 4 * MIB))
    plain = {"low_water": 0, "hook": "", "on_full": "fail", "keep_min": 0}
    assert s.policy() == plain
    s.set_policy(75, "true")
    assert s.policy() == {**plain, "low_water": 75, "hook": "true"}
    s.set_policy(on_full="delete-oldest", keep_min=2)
    assert s.policy() == {**plain, "on_full": "delete-oldest", "keep_min": 2}
    for bad in ({"low_water": 150}, {"on_full": "sometimes"}):
        try:
            s.set_policy(**bad)
            raise AssertionError(f"{bad} was taken")
        except (dms.InvalidArgumentError, OverflowError, ValueError):
            pass
    assert s.policy()["keep_min"] == 2
    s.close()
    origin, cow = images("op.img", 4 * MIB), images("cq.img", 16 * MIB)
    dms.create("p", origin, cow, bind=True, format=True)
    assert dms.policy("p") == plain
    assert dms.policy("p", low_water=50)["low_water"] == 50
    assert dms.policy("p")["low_water"] == 50
    got = dms.policy("p", on_full="delete-oldest", keep_min=1)
    assert got == {**plain, "low_water": 50, "on_full": "delete-oldest", "keep_min": 1}


def test_on_full_delete_oldest(images):
    """A store under delete-oldest: origin writes go on when the COW
    device is full; the oldest snapshots go, an open one never does."""
    origin, cow = images("fo.img", 2 * MIB), images("fc.img", 4 * MIB)
    s = dms.Store.format(cow)
    s.bind("o", origin)
    s.set_policy(on_full="delete-oldest", keep_min=1)
    o = s.volume("o", 0)
    first = s.snapshot("o")
    kept = s.volume("o", first)
    want = kept.read(0, 2 * MIB)
    for r in range(6):
        s.snapshot("o")
        half = (r % 2) * MIB
        o.write(half, bytes([r + 1]) * MIB)
    tags = s.tags("o")
    assert first in tags and len(tags) < 7, tags
    gone = [t for _, t in s.sacrificed()]
    assert gone and first not in gone and not set(gone) & set(tags), (gone, tags)
    assert gone == sorted(gone)
    assert kept.read(0, 2 * MIB) == want
    assert s.check().clean


def test_grow_origin(images):
    """An origin whose file grew takes the new size; its snapshots keep
    theirs; a new snapshot has the new one."""
    origin, cow = images("go.img", 1 * MIB), images("gc.img", 8 * MIB)
    s = dms.Store.format(cow)
    s.bind("o", origin)
    o = s.volume("o", 0)
    o.write(0, b"\x01" * MIB)
    t1 = s.snapshot("o")
    assert s.grow_origin("o") == (MIB, MIB)
    os.truncate(origin, 2 * MIB)
    assert s.grow_origin("o") == (MIB, 2 * MIB)
    assert o.size == 2 * MIB
    o.write(MIB, b"\x02" * MIB)
    t2 = s.snapshot("o")
    sizes = {v.tag: v.size for v in s.versions("o")}
    assert sizes == {0: 2 * MIB, t1: MIB, t2: 2 * MIB}, sizes
    assert s.volume("o", t1).read(0, MIB) == b"\x01" * MIB
    try:
        s.rollback("o", t1)
        raise AssertionError("a smaller snapshot was rolled back")
    except dms.InvalidArgumentError:
        pass
    os.truncate(origin, MIB)
    try:
        s.grow_origin("o")
        raise AssertionError("a shrunk origin was taken")
    except dms.InvalidArgumentError:
        pass
    assert s.check().clean
