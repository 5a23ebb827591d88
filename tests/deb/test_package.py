"""The Debian package, built by `make deb`, installed with `dpkg -i` on a booted copy of this machine and run by
a real systemd with the unit's real sandbox, filtering a real Postfix (on the host) through its socket.

What this proves that the other tests cannot: the package installs on Debian 12 with Debian's own
python3-milter, python3-yaml and python3-prometheus-client (no venv, no compiler); its maintainer scripts make
the user, the directories and the review secret and start the service; the unit as shipped (ProtectSystem=
strict, PrivateUsers, StateDirectory, ...) lets the milter create its socket and write its store; purge
removes what it made. All addresses are made up.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from amzguard import __version__
from tests.deb.booted import BootedCopy
from tests.deb.cases import *  # noqa: F403 (the shared cases, run against this module's fixture)
from tests.deb.installed import CONFIG, SECRET, Installed, installed_amzguard
from tests.e2e.harness import _wait_until

pytestmark = pytest.mark.deb

REPO = Path(__file__).resolve().parents[2]
DEB = REPO / "build" / f"amzguard_{__version__}_all.deb"
# The lintian tags that may remain, each explained in debian/ (see debian/rules and the overrides file).
EXPECTED_LINTIAN = {"no-manual-page"} if not (REPO / "man" / "amzguard.8").exists() else set()


def build_package() -> Path:
    done = subprocess.run(["make", "-C", str(REPO), "deb"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert DEB.exists(), done.stdout
    return DEB


@pytest.fixture(scope="module")
def deb() -> Path:
    return build_package()


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Installed]:
    def install(copy: BootedCopy) -> None:
        done = copy.run(["dpkg", "-i", f"/mnt/debs/{deb.name}"], check=False, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    with installed_amzguard("deb", "/usr/bin/amzguard", install, binds={"/mnt/debs": deb.parent}) as env:
        yield env


# -- the package itself ------------------------------------------------------------------------------


def test_lintian_reports_only_the_explained_tags(deb: Path) -> None:
    done = subprocess.run(["lintian", "--pedantic", "--info", str(deb)], capture_output=True, text=True, timeout=300)
    tags = {m.group(1) for m in re.finditer(r"^[EWIPX]: amzguard(?: source)?: (\S+)", done.stdout, re.M)}
    assert tags == EXPECTED_LINTIAN, done.stdout + done.stderr


def test_the_build_leaves_the_checkout_as_it_was(deb: Path) -> None:
    """make deb builds in build/src (removed again), so no debhelper or pybuild output lands in the checkout."""
    leftovers = [REPO / "debian" / name for name in ("amzguard", ".debhelper", "files", "debhelper-build-stamp",
                                                      "amzguard.substvars")]  # fmt: skip
    leftovers += [REPO / ".pybuild", REPO / "build" / "src"]
    assert [str(path) for path in leftovers if path.exists()] == []


def test_changelog_version_is_the_package_version() -> None:
    """make deb names the file after debian/changelog; this test finds it by amzguard.__version__."""
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"amzguard ({__version__}) "), first


def test_files_users_and_service_after_install(installed: Installed) -> None:
    copy = installed.copy
    assert copy.path("/lib/systemd/system/amzguard.service").read_text() == (REPO / "systemd" / "amzguard.service").read_text()
    assert copy.run(["stat", "-c", "%U:%G %a", "/etc/amzguard", CONFIG, SECRET]).stdout.split("\n")[:3] == [
        "root:amzguard 750", "root:amzguard 640", "root:amzguard 640"]  # fmt: skip
    assert re.fullmatch(r"[A-Za-z0-9+/=]{32}", installed.secret)
    assert copy.run(["stat", "-c", "%U:%G %a", "/var/lib/amzguard"]).stdout.strip() == "amzguard:amzguard 750"
    assert copy.run(["stat", "-c", "%U:%G %a", "/var/spool/postfix/amzguard"]).stdout.strip() == "amzguard:postfix 2750"
    assert copy.run(["id", "-nG", "amzguard"]).stdout.split() == ["amzguard"]  # a group of its own, no other
    conffiles = copy.run(["dpkg-query", "--showformat=${Conffiles}", "--show", "amzguard"]).stdout
    assert CONFIG in conffiles and "/etc/postfix/amzguard-transport.regexp" in conffiles
    for page in sorted((REPO / "man").glob("*.[58]")):
        section = page.suffix.lstrip(".")
        assert copy.path(f"/usr/share/man/man{section}/{page.name}.gz").exists(), page.name  # the unit's Documentation=
    examples = copy.run(["ls", "/usr/share/doc/amzguard/examples"]).stdout.split()
    assert {"amzguard-main.cf", "amzguard-master.cf", "amzguard-transport.regexp", "amzguard.mc", "amzguard-rules.yml",
            "amzguard-dashboard.json"} <= set(examples)  # fmt: skip
    # Started by postinst (enabled, as opendkim), as the unprivileged user, by Debian's Python.
    assert copy.run(["systemctl", "is-enabled", "amzguard"]).stdout.strip() == "enabled"
    assert copy.run(["systemctl", "is-active", "amzguard"]).stdout.strip() == "active"
    main_pid = installed.main_pid()
    assert copy.run(["ps", "-o", "user=,args=", "-p", main_pid]).stdout.split()[:3] == [
        "amzguard", "/usr/bin/python3", "/usr/bin/amzguard"]  # fmt: skip
    assert installed.as_amzguard("check-config", "-c", CONFIG).returncode == 0


def test_reinstall_keeps_the_admins_config_and_the_secret(installed: Installed) -> None:
    """An upgrade (here: the same package again) keeps the edited conffile and the secret and restarts."""
    before = installed.main_pid()
    done = installed.copy.run(["dpkg", "-i", f"/mnt/debs/{DEB.name}"], check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed.copy.path(SECRET).read_text().strip() == installed.secret
    assert yaml.safe_load(installed.copy.path(CONFIG).read_text())["channels"]["review"]["enabled"] is True
    assert installed.copy.run(["stat", "-c", "%U:%G %a", CONFIG]).stdout.strip() == "root:amzguard 640"
    assert _wait_until(lambda: installed.main_pid() not in ("0", before), 60), "not restarted"
    assert installed.copy.run(["systemctl", "is-active", "amzguard"], check=False).stdout.strip() in ("active", "activating")


# -- and away again ----------------------------------------------------------------------------------


def test_purge_removes_what_the_package_made(installed: Installed) -> None:
    """Last in this module (pytest keeps file order): the service goes, and with it config, secret and store."""
    done = installed.copy.run(["dpkg", "--purge", "amzguard"], check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed.copy.run(["systemctl", "is-active", "amzguard"], check=False).stdout.strip() == "inactive"
    for gone in ("/usr/bin/amzguard", "/etc/amzguard", "/lib/systemd/system/amzguard.service"):
        assert not installed.copy.path(gone).exists(), gone
    assert list(installed.state.iterdir()) == []  # the store, in the bound (so kept) directory, emptied
