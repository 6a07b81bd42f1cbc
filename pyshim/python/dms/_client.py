"""Talking to the dms daemon: the commands of the ``dms`` tool, from Python.

Every function sends one request over the daemon's control socket
(``$DMS_RUN_DIR/control.sock``) and starts the daemon (``dms daemon``) when
none answers, as the ``dms`` command does. Failures raise the exception
classes of :mod:`dms` (``NotFoundError``, ``BusyError``, ...).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field, fields
from typing import List, Optional

from . import _dms

__all__ = [
    "Device",
    "SnapshotInfo",
    "RollbackInfo",
    "OriginInfo",
    "DeviceStatus",
    "run_dir",
    "create",
    "remove",
    "remove_all",
    "snapshot",
    "delete",
    "rollback",
    "list",
    "status",
    "table",
    "message",
    "settle",
    "shutdown",
    "du",
    "prune",
    "grow",
    "policy",
]



def run_dir() -> str:
    """The daemon's runtime directory: ``$DMS_RUN_DIR``, else ``/run/dms`` for
    root, else ``$XDG_RUNTIME_DIR/dms``."""
    d = os.environ.get("DMS_RUN_DIR")
    if d:
        return d
    if os.geteuid() == 0:
        return "/run/dms"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "dms")
    return os.path.join("/tmp", f"dms-{os.geteuid()}")


def _dms_binary() -> str:
    b = os.environ.get("DMS_BIN") or shutil.which("dms")
    if not b:
        raise _dms.DaemonError("the dms command is not installed (set DMS_BIN or put dms on PATH)")
    return b


def _connect(start: bool) -> socket.socket:
    rd = run_dir()
    path = os.path.join(rd, "control.sock")

    def attempt() -> Optional[socket.socket]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            return None

    s = attempt()
    if s is not None:
        return s
    if not start:
        raise _dms.DaemonError(f"no dms daemon is running ({path})")
    os.makedirs(rd, exist_ok=True)
    with open(os.path.join(rd, "daemon.log"), "ab") as log:
        subprocess.Popen(
            [_dms_binary(), "daemon"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        s = attempt()
        if s is not None:
            return s
        time.sleep(0.05)
    raise _dms.DaemonError(f"the dms daemon did not start; see {os.path.join(rd, 'daemon.log')}")


def _checked(resp: dict) -> dict:
    """A daemon's answer, or its error raised as the class of its kind."""
    if resp.get("code", 1) != 0:
        cls = _dms.error_class(resp.get("kind") or "failed")
        raise cls(resp.get("error") or "failed")
    return resp


def _call(req: dict, start: bool = True) -> dict:
    with _connect(start) as s:
        buf = b""
        try:
            s.sendall(json.dumps(req).encode() + b"\n")
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as e:
            # A daemon that stops (or is killed) as the request arrives.
            raise _dms.DaemonError(f"the dms daemon closed the connection ({e})") from e
    if not buf:
        raise _dms.DaemonError("the dms daemon closed the connection")
    resp = _checked(json.loads(buf))
    return resp


def _device(arg: str) -> str:
    """A path, or a bare kernel name meaning /dev/<name>, made absolute (as
    the dms command resolves it)."""
    return _dms.device_path(arg)


@dataclass(frozen=True)
class Device:
    """A dm_dev as created: its name, its file, and its loop device if any."""

    name: str
    path: str
    loop: Optional[str]


@dataclass(frozen=True)
class SnapshotInfo:
    """One row of ``dms list``: a version with a tag (0 = the origin)."""

    tag: int
    date: str
    birthday: int
    rollback: bool
    chunks: int
    dm_dev: Optional[str]
    memo: str
    parent: Optional[int]
    uuid: str = ""
    #: Size in bytes: a snapshot taken before its origin grew keeps its own.
    size: int = 0


_SNAPSHOT_FIELDS = {f.name for f in fields(SnapshotInfo)}


@dataclass(frozen=True)
class RollbackInfo:
    tag: int
    done_chunks: int
    total_chunks: int


@dataclass(frozen=True)
class OriginInfo:
    """One origin's header block of ``dms list`` and its snapshots."""

    origin_device: str
    origin_id: str
    cow_device: str
    chunk_pages: int
    used_versions: int
    max_versions: int
    used_chunks: int
    total_chunks: int
    cow_status: str
    cleaning: bool
    cleaning_versions: int
    rollbacking: Optional[RollbackInfo]
    snapshots: List[SnapshotInfo] = field(default_factory=lambda: [])
    #: The token of an interrupted receive into this origin (``dms send
    #: --resume`` takes it), else None.
    receive_token: Optional[str] = None
    #: The store's space policy, as ``dms.policy`` returns it.
    policy: Optional[dict] = None


@dataclass(frozen=True)
class DeviceStatus:
    """One line of ``dms dmsetup status``."""

    dm_dev: str
    sectors: int
    used_chunks: int
    total_chunks: int
    metadata_chunks: int
    used_versions: int
    max_versions: int
    state: str
    cleaning: Optional[int]
    rollback: Optional[str]


def create(
    dm_dev: str,
    origin_dev: str,
    cow_dev: str,
    tag: Optional[int] = None,
    *,
    bind: bool = False,
    format: bool = False,
    force_format: bool = False,
    chunk_size: Optional[int] = None,
    origin_id: Optional[str] = None,
    loop: bool = False,
    read_only: bool = False,
) -> Device:
    """Create the dm_dev of an origin, or with ``tag`` of a snapshot
    (``dms create``). ``bind`` binds the origin to the COW device, ``format``
    / ``force_format`` format the COW device, ``chunk_size`` is in 4 KiB pages.
    ``loop`` attaches a loop device; ``read_only`` exposes it read-only."""
    o, c = _device(origin_dev), _device(cow_dev)
    args = ["cs", o, c, str(tag)] if tag is not None else ["co", o, c]
    if origin_id is not None:
        args += ["-i", origin_id]
    if bind:
        args.append("-b")
    if format:
        args.append("-f")
    if force_format:
        args.append("-F")
    if chunk_size is not None:
        args += ["-c", str(chunk_size)]
    resp = _call({"op": "create_args", "name": dm_dev, "args": args, "loop_dev": loop, "read_only": read_only})
    data = resp.get("data") or {}
    return Device(dm_dev, data.get("path", ""), data.get("loop"))


def remove(dm_dev: str, force: bool = False) -> None:
    """Remove a dm_dev (``dms remove``); refused while it is busy unless forced."""
    _call({"op": "remove", "name": dm_dev, "force": force})


def remove_all(force: bool = False) -> None:
    """Remove every dm_dev (``dms dmsetup remove_all``)."""
    _call({"op": "remove_all", "force": force})


def message(dm_dev: str, text: str) -> Optional[int]:
    """Send a raw dm-snap-mv message, e.g. ``message("orig", "so -m nightly")``.
    Returns the new tag for ``so`` and ``ss``, else None."""
    resp = _call({"op": "message", "name": dm_dev, "args": shlex.split(text)})
    data = resp.get("data") or {}
    return data.get("tag")


def snapshot(dm_dev: str, tag: Optional[int] = None, memo: Optional[str] = None) -> int:
    """Take a snapshot of the origin, or of snapshot ``tag``. Returns the new tag."""
    args = ["ss", str(tag)] if tag is not None else ["so"]
    if memo is not None:
        args += ["-m", memo]
    resp = _call({"op": "message", "name": dm_dev, "args": args})
    return int((resp.get("data") or {})["tag"])


def delete(dm_dev: str, tag: Optional[int] = None) -> None:
    """Delete snapshot ``tag``; without a tag, unbind the origin and remove its
    dm_dev (all snapshots must be deleted first)."""
    args = ["ds", str(tag)] if tag is not None else ["do"]
    _call({"op": "message", "name": dm_dev, "args": args})


def rollback(dm_dev: str, tag: int, background: bool = False) -> None:
    """Roll snapshot ``tag`` back into the origin; with ``background`` return at once."""
    args = ["rs", str(tag)] + (["-b"] if background else [])
    _call({"op": "message", "name": dm_dev, "args": args})


def list(dm_dev: Optional[str] = None) -> List[OriginInfo]:  # noqa: A001 - mirrors `dms list`
    """What ``dms list`` shows, as records."""
    resp = _call({"op": "list", "name": dm_dev})
    out = []
    for o in (resp.get("data") or {}).get("origins", []):
        rb = o.get("rollbacking")
        out.append(
            OriginInfo(
                origin_device=o["origin_device"],
                origin_id=o["origin_id"],
                cow_device=o["cow_device"],
                chunk_pages=o["chunk_pages"],
                used_versions=o["used_versions"],
                max_versions=o["max_versions"],
                used_chunks=o["used_chunks"],
                total_chunks=o["total_chunks"],
                cow_status=o["cow_status"],
                cleaning=o["cleaning"],
                cleaning_versions=o["cleaning_versions"],
                rollbacking=RollbackInfo(**rb) if rb else None,
                # Fields a newer daemon adds are left out.
                snapshots=[
                    SnapshotInfo(**{k: v for k, v in s.items() if k in _SNAPSHOT_FIELDS})
                    for s in o["snapshots"]
                ],
                receive_token=(o.get("receiving") or {}).get("receive_token"),
                policy=o.get("policy"),
            )
        )
    return out


def status(dm_dev: Optional[str] = None) -> List[DeviceStatus]:
    """What ``dms dmsetup status`` shows, as records."""
    resp = _call({"op": "status", "name": dm_dev})
    out = []
    for line in resp.get("output", "").splitlines():
        if line.startswith("No devices"):
            continue
        name = dm_dev
        if dm_dev is None:
            name, _, line = line.partition(": ")
        f = line.split()
        used, total = (int(x) for x in f[3].split("/"))
        versions, vmax = (int(x) for x in f[5].split("/"))
        out.append(
            DeviceStatus(
                dm_dev=name or "",
                sectors=int(f[1]),
                used_chunks=used,
                total_chunks=total,
                metadata_chunks=int(f[4]),
                used_versions=versions,
                max_versions=vmax,
                state=f[6],
                cleaning=None if f[7] == "-" else int(f[7]),
                rollback=None if f[8] == "-" else f[8],
            )
        )
    return out


def table(dm_dev: Optional[str] = None) -> str:
    """What ``dms dmsetup table`` shows."""
    return _call({"op": "table", "name": dm_dev}).get("output", "")


def settle() -> None:
    """Wait until background cleaning and rollbacks are done."""
    _call({"op": "settle"})


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has ended: gone, or a zombie whose threads
    have all left."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(") ", 1)[-1][:1]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return True
    return state == "Z" and threads <= 1


def shutdown(force: bool = False) -> None:
    """Stop the daemon (no-op if none runs). Returns once it has exited, its
    held writes on their devices and its devices free, as ``dms shutdown``
    does."""
    pid = None
    try:
        with open(os.path.join(run_dir(), "daemon.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        pass
    try:
        _call({"op": "shutdown", "force": force}, start=False)
    except _dms.DaemonError:
        return
    deadline = time.monotonic() + 30
    while pid is not None and not _ended(pid):
        if time.monotonic() > deadline:
            raise _dms.DaemonError("the dms daemon did not exit within 30 s")
        time.sleep(0.02)


def du(dm_dev: str) -> dict:
    """What ``dms du --json`` shows: per tag the COW chunks it owns, how many
    of them other snapshots read too, and what deleting it frees."""
    return _call({"op": "du", "name": dm_dev}).get("data") or {}


def prune(
    dm_dev: str,
    keep_last: int,
    keep_within: Optional[float] = None,
    dry_run: bool = False,
) -> List[int]:
    """``dms prune``: delete the snapshots of ``dm_dev``'s origin that are
    neither among the ``keep_last`` newest nor younger than ``keep_within``
    seconds, never an exposed one. Returns the tags deleted (with
    ``dry_run``, those it would delete)."""
    if keep_last < 0:
        raise _dms.UsageError("keep_last must be at least 0")
    now = time.time()
    snaps = [s for s in list(dm_dev)[0].snapshots if s.tag != 0]
    snaps.sort(key=lambda s: (s.birthday, s.tag), reverse=True)
    chosen = []
    for i, s in enumerate(snaps):
        recent = keep_within is not None and now - s.birthday < keep_within
        if i < keep_last or recent or s.dm_dev is not None:
            continue
        chosen.append(s.tag)
    chosen.sort()
    if not dry_run:
        for t in chosen:
            delete(dm_dev, t)
    return chosen


def grow(dm_dev: str) -> tuple:
    """``dms grow``: the store of ``dm_dev`` takes the new space of its COW
    device. Returns (bytes before, bytes after)."""
    data = _call({"op": "grow", "name": dm_dev}).get("data") or {}
    return (data.get("old_bytes", 0), data.get("new_bytes", 0))


def policy(
    dm_dev: str,
    low_water: Optional[int] = None,
    hook: Optional[str] = None,
    on_full: Optional[str] = None,
    keep_min: Optional[int] = None,
) -> dict:
    """``dms policy``: the store's space policy ``{"low_water", "hook",
    "on_full", "keep_min"}``, after setting what is given."""
    req = {
        "op": "policy",
        "name": dm_dev,
        "low_water": low_water,
        "hook": hook,
        "on_full": on_full,
        "keep_min": keep_min,
    }
    return _call(req).get("data") or {}
