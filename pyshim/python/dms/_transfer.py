"""``dms send`` and ``dms receive`` from Python, through the daemon.

When the daemon holds the COW device, the stream goes in frames over its
control socket (docs/daemon.md): ``[kind: 1 byte][length: u32 big-endian]
[payload]``, kinds ``d`` (stream bytes), ``e`` (end of the stream bytes),
``p`` (progress), ``g`` (the daemon takes the stream) and ``r`` (the answer,
JSON, last). When it does not, the embedded engine (:class:`dms.Store`)
does the work in this process, as the ``dms`` command does offline.
"""

from __future__ import annotations

import json
import os
import socket
from typing import BinaryIO, Callable, Optional, Tuple

from . import _dms
from ._client import _checked, _connect, _device

__all__ = ["send", "receive", "receive_token", "receive_abort"]

_PIECE = 1 << 20
Progress = Optional[Callable[[int, int], None]]


def _read_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise _dms.DaemonError("the dms daemon closed the connection")
        buf += chunk
    return bytes(buf)


def _read_frame(s: socket.socket) -> Tuple[int, bytes]:
    head = _read_exact(s, 5)
    n = int.from_bytes(head[1:], "big")
    if n > _PIECE:
        raise _dms.DaemonError(f"a frame of {n} bytes from the daemon")
    return head[0], _read_exact(s, n)


def _frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + len(payload).to_bytes(4, "big") + payload


def _answer(payload: bytes) -> dict:
    return _checked(json.loads(payload))


def _not_held(payload: bytes) -> bool:
    resp = json.loads(payload)
    return resp.get("code", 1) != 0 and (resp.get("data") or {}).get("held") is False


def _open(req: dict) -> Optional[socket.socket]:
    """A connection with the request sent, or None when no daemon runs."""
    try:
        s = _connect(False)
    except _dms.DaemonError:
        return None
    s.sendall(json.dumps(req).encode() + b"\n")
    return s


def _progress(payload: bytes, progress: Progress) -> None:
    if progress is not None and len(payload) == 16:
        progress(int.from_bytes(payload[:8], "big"), int.from_bytes(payload[8:], "big"))


def _only_origin(store: "_dms.Store", origin_id: Optional[str]) -> str:
    if origin_id is not None:
        return origin_id
    origins = store.origins()
    if len(origins) != 1:
        raise _dms.UsageError(f"the store holds {len(origins)} origins; name one with origin_id")
    return origins[0]


def send(
    cow_dev: str,
    tag: int,
    file: BinaryIO,
    *,
    origin_id: Optional[str] = None,
    from_tag: Optional[int] = None,
    format: str = "dms",  # noqa: A002 - mirrors `dms send --format`
    resume: Optional[str] = None,
    origin_dev: Optional[str] = None,
    progress: Progress = None,
) -> None:
    """Write a stream of snapshot ``tag`` to ``file``, as ``dms send``
    does: through the daemon when it holds ``cow_dev`` (I/O goes on),
    else here (then the origin device is ``origin_dev``, or the origin's id
    when that is its path)."""
    cow = _device(cow_dev)
    odev = _device(origin_dev) if origin_dev else None
    req = {
        "op": "send",
        "cow": cow,
        "origin_id": origin_id,
        "origin_dev": odev,
        "tag": tag,
        "from": from_tag,
        "format": format,
        "resume": resume,
    }
    s = _open(req)
    if s is not None:
        with s:
            while True:
                kind, payload = _read_frame(s)
                if kind == ord("d"):
                    file.write(payload)
                elif kind == ord("e"):
                    if hasattr(file, "flush"):
                        file.flush()
                elif kind == ord("p"):
                    _progress(payload, progress)
                elif kind == ord("r"):
                    if not _not_held(payload):
                        _answer(payload)
                        return
                    break
                else:
                    raise _dms.DaemonError(f"a frame of kind {kind:#x} from the daemon")
    store = _dms.Store.open(cow)
    try:
        oid = _only_origin(store, origin_id)
        path = odev or oid
        if not os.path.isabs(path):
            raise _dms.NotFoundError(
                f"where the origin device of {oid} is is not known; pass origin_dev"
            )
        store.attach(oid, path)
        store.send(oid, tag, file, from_tag=from_tag, format=format, resume=resume)
    finally:
        store.close()


def _receive_req(origin_dev: str, cow_dev: str, origin_id: Optional[str], action: str, **kw) -> dict:
    req = {
        "op": "receive",
        "origin": _device(origin_dev),
        "cow": _device(cow_dev),
        "origin_id": origin_id,
        "bind": False,
        "format_store": None,
        "chunk_pages": None,
        "format": "dms",
        "force": False,
        "action": action,
    }
    req.update(kw)
    return req


def _offline(req: dict, act: Callable[["_dms.Store", str], object]) -> object:
    if req["format_store"] is None:
        store = _dms.Store.open(req["cow"])
    else:
        store = _dms.Store.format(req["cow"], chunk_pages=req["chunk_pages"] or 1, force=req["format_store"])
    try:
        oid = req["origin_id"] or req["origin"]
        if req["bind"]:
            store.bind(oid, req["origin"])
        else:
            store.attach(oid, req["origin"])
        out = act(store, oid)
        store.flush()
        return out
    finally:
        store.close()


def receive(
    origin_dev: str,
    cow_dev: str,
    file: BinaryIO,
    *,
    origin_id: Optional[str] = None,
    format: str = "dms",  # noqa: A002 - mirrors `dms receive --format`
    force: bool = False,
    bind: bool = False,
    format_store: bool = False,
    force_format: bool = False,
    chunk_size: Optional[int] = None,
    progress: Progress = None,
) -> int:
    """Read a stream from ``file`` into the origin and return the new
    snapshot's tag, as ``dms receive`` does (through the daemon when it
    holds ``cow_dev``, else here). ``bind`` binds the origin first;
    ``format_store`` / ``force_format`` (with ``bind``) format the COW
    device, ``chunk_size`` in 4 KiB pages. ``format`` is the stream's."""
    if (format_store or force_format or chunk_size is not None) and not bind:
        raise _dms.UsageError("format_store, force_format and chunk_size go only with bind")
    fmt = True if force_format else (False if format_store else None)
    req = _receive_req(
        origin_dev,
        cow_dev,
        origin_id,
        "stream",
        format=format,
        force=force,
        bind=bind,
        format_store=fmt,
        chunk_pages=chunk_size,
    )
    s = _open(req)
    if s is not None:
        with s:
            kind, payload = _read_frame(s)
            if kind == ord("g"):
                try:
                    while True:
                        piece = file.read(_PIECE)
                        if not piece:
                            s.sendall(_frame(b"e"))
                            break
                        s.sendall(_frame(b"d", bytes(piece)))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the daemon stopped reading: its answer says why
                while True:
                    kind, payload = _read_frame(s)
                    if kind == ord("p"):
                        _progress(payload, progress)
                    elif kind == ord("r"):
                        return int(_answer(payload)["data"]["tag"])
                    else:
                        raise _dms.DaemonError(f"a frame of kind {kind:#x} from the daemon")
            if kind != ord("r"):
                raise _dms.DaemonError(f"a frame of kind {kind:#x} from the daemon")
            if not _not_held(payload):
                _answer(payload)
                raise _dms.DaemonError("the daemon answered without a tag")
    return int(_offline(req, lambda st, oid: st.receive(oid, file, format=format, force=force)))


def _action(origin_dev: str, cow_dev: str, origin_id: Optional[str], action: str) -> Optional[dict]:
    req = _receive_req(origin_dev, cow_dev, origin_id, action)
    s = _open(req)
    if s is None:
        return None
    with s:
        kind, payload = _read_frame(s)
    if kind != ord("r"):
        raise _dms.DaemonError(f"a frame of kind {kind:#x} from the daemon")
    if _not_held(payload):
        return None
    try:
        return _answer(payload)
    except _dms.NotFoundError:
        if action == "token":
            return {"output": ""}
        raise


def receive_token(origin_dev: str, cow_dev: str, *, origin_id: Optional[str] = None) -> Optional[str]:
    """The resume token of an interrupted receive (``dms receive --token``),
    or None when there is none."""
    r = _action(origin_dev, cow_dev, origin_id, "token")
    if r is None:
        req = _receive_req(origin_dev, cow_dev, origin_id, "token")
        return _offline(req, lambda st, oid: st.receive_token(oid))  # type: ignore[return-value]
    return r.get("output", "").strip() or None


def receive_abort(origin_dev: str, cow_dev: str, *, origin_id: Optional[str] = None) -> None:
    """Undo an interrupted receive (``dms receive --abort``)."""
    if _action(origin_dev, cow_dev, origin_id, "abort") is None:
        req = _receive_req(origin_dev, cow_dev, origin_id, "abort")
        _offline(req, lambda st, oid: st.receive_abort(oid))
