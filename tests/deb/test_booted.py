"""The booted copy starts as a machine amzguard was never installed on, whatever the host holds.

Found the hard way: after ``make run`` (which makes /var/lib/amzguard and a store file as root, as a
developer's README flow does before ``make test``) the system test's installed service could not open the
store the copy had inherited from the host. ``BootedCopy`` hides the package's paths (``HOST_STATE``) with
overlayfs whiteouts; this checks that on a path of the test's own, so it holds on any host.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from tests.deb.booted import HOST_STATE, BootedCopy
from tests.e2e.harness import make_workdir


def test_hidden_host_paths_are_absent_and_their_parents_unchanged() -> None:
    base = Path("/var/tmp") / f"amzguard-booted-{uuid.uuid4().hex[:12]}"
    hidden, kept = base / "state", base / "other"
    for directory in (hidden, kept):
        directory.mkdir(parents=True)
        (directory / "amzguard.sqlite").write_text("made by the host as root\n")
    base.chmod(0o751)
    os.chown(base, 0, 65534)  # an owner and mode the copy's parent directory must keep
    workdir = make_workdir("amzguard-booted-")
    try:
        with BootedCopy(workdir, hidden=(str(hidden),)) as copy:
            assert copy.run(["test", "-e", str(hidden)], check=False).returncode == 1
            assert copy.run(["cat", str(kept / "amzguard.sqlite")]).stdout == "made by the host as root\n"
            assert copy.run(["stat", "-c", "%u:%g %a", str(base)]).stdout.strip() == "0:65534 751"
            copy.run(["mkdir", str(hidden)])  # the copy may make it anew, as dpkg does
            assert (hidden / "amzguard.sqlite").exists()  # and the host's own stays as it was
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_packages_own_paths_are_hidden_unless_bound(tmp_path: Path) -> None:
    assert {"/etc/amzguard", "/var/lib/amzguard", "/var/spool/postfix/amzguard"} <= set(HOST_STATE)
    bound = BootedCopy(tmp_path, binds={"/var/lib/amzguard": tmp_path / "state"})
    assert "/var/lib/amzguard" not in bound.hidden and "/etc/amzguard" in bound.hidden
