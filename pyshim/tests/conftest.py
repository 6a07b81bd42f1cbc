import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def image(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


@pytest.fixture
def images(tmp_path):
    """Make sparse image files: images("o.img", 8 << 20) -> path."""
    return lambda name, size: image(tmp_path / name, size)


def _missing_for_daemon():
    if os.geteuid() != 0:
        return "not running as root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not os.environ.get("DMS_BIN") and not shutil.which("dms"):
        built = ROOT / "target" / "release" / "dms"
        if built.exists():
            os.environ["DMS_BIN"] = str(built)
        else:
            return "the dms binary is not built (cargo build --release -p dms-cli)"
    return None


def _require(what: str):
    why = _missing_for_daemon()
    if why is None:
        return
    if what == "loop" and not os.path.exists("/dev/loop-control"):
        why = "no loop devices"
    if why and os.environ.get("CI") == "true":
        pytest.fail(f"cannot run here ({why}); CI must run it")
    if why:
        pytest.skip(why)


@pytest.fixture
def daemon(tmp_path_factory, monkeypatch):
    """A private dms daemon (its own runtime directory), shut down afterwards."""
    _require("daemon")
    run = tmp_path_factory.mktemp("run")
    monkeypatch.setenv("DMS_RUN_DIR", str(run))
    import dms

    yield run
    try:
        dms.remove_all(force=True)
    except dms.DmsError:
        pass
    dms.shutdown(force=True)
    subprocess.run(["umount", "-l", str(run / "mapper")], capture_output=True)


@pytest.fixture
def mounts():
    """Mount helper; unmounts and detaches loops at the end."""
    done = []

    def mount(dev, where):
        os.makedirs(where, exist_ok=True)
        subprocess.run(["mount", dev, str(where)], check=True)
        done.append(str(where))
        return Path(where)

    def umount(where):
        subprocess.run(["umount", str(where)], check=True)
        done.remove(str(where))

    mount.umount = umount
    yield mount
    for m in reversed(done):
        subprocess.run(["umount", "-l", m], capture_output=True)
