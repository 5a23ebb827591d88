"""The venv install of docs/install.md, run as it stands on a booted copy of this machine, then the same
enforcement cases as the package test against /usr/local/bin/amzguard under the sed-edited unit.

The shell block is taken from the document itself (the one after the marker comment), so the documented
steps are the tested ones: the prerequisites, `/usr/bin/python3 -m venv`, the one command path, sysusers and
tmpfiles under /etc, the secret, and the directories made before `systemctl enable --now`."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deb.booted import BootedCopy
from tests.deb.cases import *  # noqa: F403 (the shared cases, run against this module's fixture)
from tests.deb.installed import CONFIG, SECRET, Installed, installed_amzguard
from tests.e2e.harness import make_workdir

pytestmark = pytest.mark.deb

REPO = Path(__file__).resolve().parents[2]
INSTALL_DOC = REPO / "docs" / "install.md"
MARKER = "<!-- tests/deb/test_hand_install.py runs the next block"
COMMAND = "/usr/local/bin/amzguard"
# What a checkout holds that `pip install .` does not need (and must not see: a venv, build output).
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "var", "__pycache__", "*.egg-info", ".pytest_cache",
                                    ".hypothesis")  # fmt: skip


def documented_steps() -> str:
    text = INSTALL_DOC.read_text()
    match = re.search(re.escape(MARKER) + r".*?-->\n```sh\n(.*?)```", text, re.S)
    assert match, f"no shell block after {MARKER!r} in {INSTALL_DOC}"
    return match.group(1)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    # A copy of the checkout, as an admin has one; pip builds in it (egg-info), so not the checkout itself.
    checkout = make_workdir("amzguard-checkout-")
    shutil.copytree(REPO, checkout / "amzguard", ignore=NOT_COPIED)

    def install(copy: BootedCopy) -> None:
        done = copy.run(["sh", "-e", "-x", "-c", f"cd /srv/amzguard\n{documented_steps()}"], check=False,
                        timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        # The host's network: `pip install .` fetches pymilter, PyYAML and prometheus-client like `make venv`.
        with installed_amzguard("venv", COMMAND, install, binds={"/srv/amzguard": checkout / "amzguard"},
                                private_network=False) as env:  # fmt: skip
            yield env
    finally:
        shutil.rmtree(checkout, ignore_errors=True)


def test_one_command_path_and_the_files_of_a_hand_install(installed: Installed) -> None:
    copy = installed.copy
    assert copy.run(["readlink", COMMAND]).stdout.strip() == "/opt/amzguard/bin/amzguard"
    assert copy.run(["sh", "-c", "command -v amzguard"]).stdout.strip() == COMMAND
    unit = copy.path("/etc/systemd/system/amzguard.service").read_text()
    assert f"ExecStart={COMMAND} run -c {CONFIG}" in unit and "/usr/bin/amzguard" not in unit
    # The venv's interpreter is Debian's /usr/bin/python3 (not a pyenv one that came first on PATH).
    assert copy.run(["readlink", "-f", "/opt/amzguard/bin/python3"]).stdout.strip().startswith("/usr/bin/python3")
    for path in ("/etc/sysusers.d/amzguard.conf", "/etc/tmpfiles.d/amzguard.conf"):
        assert copy.path(path).exists(), path
    assert copy.run(["stat", "-c", "%U:%G %a", CONFIG, SECRET, "/var/lib/amzguard"]).stdout.split("\n")[:3] == [
        "root:amzguard 640", "root:amzguard 640", "amzguard:amzguard 750"]  # fmt: skip
    assert re.fullmatch(r"[A-Za-z0-9+/=]{32}", installed.secret)
    assert copy.run(["ps", "-o", "user=", "-p", installed.main_pid()]).stdout.strip() == "amzguard"
