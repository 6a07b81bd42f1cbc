"""Send and receive from Python: the embedded Store and the daemon functions."""

import io
import os

import pytest

import dms

MIB = 1 << 20


def _fill(vol, seed, offset, length):
    data = bytes((i * 7 + seed) % 251 + 1 for i in range(length))
    vol.write(offset, data)
    return data


def _content(store, origin, tag):
    with store.volume(origin, tag) as v:
        return v.read(0, v.size)


def test_embedded_full_incremental_damaged_and_resumed(images):
    a = dms.Store.format(images("ca.img", 32 * MIB))
    a.bind("o", images("oa.img", 4 * MIB))
    with a.volume("o") as v:
        _fill(v, 1, 0, 256 * 1024)
    t1 = a.snapshot("o", memo="first")
    with a.volume("o") as v:
        _fill(v, 2, MIB, 64 * 1024)
    t2 = a.snapshot("o")
    full, inc = io.BytesIO(), io.BytesIO()
    assert a.send("o", t1, full) == len(full.getvalue())
    a.send("o", t2, inc, from_tag=t1)
    assert len(inc.getvalue()) < 64 * 1024 + 4096, "an incremental stream carries the changes"

    b = dms.Store.format(images("cb.img", 32 * MIB))
    b.bind("o", images("ob.img", 4 * MIB))
    r1 = b.receive("o", io.BytesIO(full.getvalue()))
    assert _content(b, "o", r1) == _content(a, "o", t1)
    assert [v.uuid for v in b.versions("o") if v.tag == r1] == [v.uuid for v in a.versions("o") if v.tag == t1]
    assert [v.memo for v in b.versions("o") if v.tag == r1] == ["first"]

    # A damaged stream: refused, nothing new, nothing to resume.
    bad = bytearray(inc.getvalue())
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(dms.CorruptError, match="damaged"):
        b.receive("o", io.BytesIO(bytes(bad)))
    assert b.tags("o") == [r1] and b.receive_token("o") is None
    assert _content(b, "o", 0) == _content(a, "o", t1)

    # Cut short: a token; the sender continues from it.
    cut = inc.getvalue()[: len(inc.getvalue()) // 2]
    with pytest.raises(dms.IOFailure, match="resume"):
        b.receive("o", io.BytesIO(cut))
    token = b.receive_token("o")
    assert token and token.startswith("dms1-")
    rest = io.BytesIO()
    a.send("o", t2, rest, resume=token)
    r2 = b.receive("o", io.BytesIO(rest.getvalue()))
    assert _content(b, "o", r2) == _content(a, "o", t2)
    assert b.check().clean

    # Abort puts the origin back to the base.
    with a.volume("o") as v:
        _fill(v, 3, 2 * MIB, 4096)
    t3 = a.snapshot("o")
    inc3 = io.BytesIO()
    a.send("o", t3, inc3, from_tag=t2)
    with pytest.raises(dms.IOFailure):
        b.receive("o", io.BytesIO(inc3.getvalue()[:200]))
    b.receive_abort("o")
    assert b.receive_token("o") is None
    assert _content(b, "o", 0) == _content(a, "o", t2)

    with pytest.raises(ValueError, match="format"):
        a.send("o", t1, io.BytesIO(), format="zip")
    rbd = io.BytesIO()
    a.send("o", t2, rbd, from_tag=t1, format="rbd-v2")
    assert rbd.getvalue().startswith(b"rbd diff v2\n")
    a.close()
    b.close()


def test_daemon_send_and_receive(daemon, images, tmp_path):
    origin, cow = images("o.img", 8 * MIB), images("c.img", 32 * MIB)
    dev = dms.create("src", origin, cow, bind=True, force_format=True)
    with open(dev.path, "r+b") as f:
        f.write(os.urandom(MIB))
        f.flush()
        os.fsync(f.fileno())
    t1 = dms.snapshot("src")
    with open(dev.path, "r+b") as f:
        f.seek(4 * MIB)
        f.write(os.urandom(128 * 1024))
        f.flush()
        os.fsync(f.fileno())
    t2 = dms.snapshot("src")

    full, inc = tmp_path / "full.dms", tmp_path / "inc.dms"
    seen = []
    with open(full, "wb") as f:
        dms.send(cow, t1, f, progress=lambda d, t: seen.append((d, t)))
    with open(inc, "wb") as f:
        dms.send(cow, t2, f, from_tag=t1)
    assert seen and seen[-1][0] == seen[-1][1]

    # The receiving store is held by the daemon (a snapshot exposed).
    origin2, cow2 = images("o2.img", 8 * MIB), images("c2.img", 32 * MIB)
    with open(full, "rb") as f:
        r1 = dms.receive(origin2, cow2, f, bind=True, format_store=True)  # not held: in this process
    dms.create("dst1", origin2, cow2, r1, read_only=True)
    with open(inc, "rb") as f:
        r2 = dms.receive(origin2, cow2, f)  # held: through the daemon
    dms.create("dst2", origin2, cow2, r2, read_only=True)
    dms.create("src2", origin, cow, t2, read_only=True)
    with open(dms.create("src1", origin, cow, t1, read_only=True).path, "rb") as a, open(
        os.path.join(str(daemon), "mapper", "dst1"), "rb"
    ) as b:
        assert a.read() == b.read()
    with open(os.path.join(str(daemon), "mapper", "src2"), "rb") as a, open(
        os.path.join(str(daemon), "mapper", "dst2"), "rb"
    ) as b:
        assert a.read() == b.read()
    rows = {s.tag: s for s in dms.list("dst2")[0].snapshots}
    src_rows = {s.tag: s for s in dms.list("src")[0].snapshots}
    assert rows[r2].uuid == src_rows[t2].uuid and len(rows[r2].uuid) == 32

    # A cut stream through the daemon leaves a token in list and --token.
    with open(dev.path, "r+b") as f:
        f.write(os.urandom(3 * MIB))
        f.flush()
        os.fsync(f.fileno())
    t3 = dms.snapshot("src")
    buf = io.BytesIO()
    dms.send(cow, t3, buf, from_tag=t2)
    with pytest.raises(dms.IOFailure, match="resume"):
        dms.receive(origin2, cow2, io.BytesIO(buf.getvalue()[:1000]))
    token = dms.receive_token(origin2, cow2)
    assert token and dms.list("dst1")[0].receive_token == token
    with pytest.raises(dms.BusyError, match="interrupted receive"):
        dms.create("dst0", origin2, cow2)  # writes would mix into the receive
    dms.receive_abort(origin2, cow2)
    assert dms.receive_token(origin2, cow2) is None
    with pytest.raises(dms.NotFoundError):
        dms.send(cow, 99, io.BytesIO())
