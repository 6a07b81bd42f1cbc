"""dms: multi-version snapshots of block devices, from Python.

Two ways in:

* the embedded engine, no daemon needed: :class:`Store` opens a COW device in
  this process (``Store.format``, ``Store.open``), binds origins, takes
  snapshots and opens any version as a :class:`Volume` for byte-level I/O;
* the daemon, as the ``dms`` command drives it: :func:`create`,
  :func:`remove`, :func:`snapshot`, :func:`delete`, :func:`rollback`,
  :func:`list`, :func:`status`, :func:`message` and friends, acting on the
  dm_devs that the daemon exposes as files and NBD exports; :func:`send`
  and :func:`receive` move snapshots as streams.

Errors are :class:`DmsError` subclasses named after their kind.
"""

from __future__ import annotations

from ._dms import (
    AlreadyExistsError,
    BusyError,
    CheckReport,
    CorruptError,
    DaemonError,
    DmsError,
    InvalidArgumentError,
    IOFailure,
    LimitError,
    NoSpaceError,
    NotFoundError,
    OriginStatus,
    Store,
    StoreFailedError,
    StoreStatus,
    UsageError,
    Version,
    Volume,
    __version__,
)
from ._client import (
    DeviceStatus,
    Device,
    OriginInfo,
    RollbackInfo,
    SnapshotInfo,
    create,
    delete,
    du,
    grow,
    list,
    message,
    policy,
    prune,
    remove,
    remove_all,
    rollback,
    run_dir,
    settle,
    shutdown,
    snapshot,
    status,
    table,
)
from ._transfer import receive, receive_abort, receive_token, send

__all__ = [
    "AlreadyExistsError",
    "BusyError",
    "CheckReport",
    "CorruptError",
    "DaemonError",
    "Device",
    "DeviceStatus",
    "DmsError",
    "IOFailure",
    "InvalidArgumentError",
    "LimitError",
    "NoSpaceError",
    "NotFoundError",
    "OriginInfo",
    "OriginStatus",
    "RollbackInfo",
    "SnapshotInfo",
    "Store",
    "StoreFailedError",
    "StoreStatus",
    "UsageError",
    "Version",
    "Volume",
    "__version__",
    "create",
    "delete",
    "du",
    "grow",
    "list",
    "message",
    "policy",
    "prune",
    "remove",
    "remove_all",
    "receive",
    "receive_abort",
    "receive_token",
    "rollback",
    "run_dir",
    "send",
    "settle",
    "shutdown",
    "snapshot",
    "status",
    "table",
]
