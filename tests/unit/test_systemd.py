"""The shipped systemd files: `systemd-analyze verify`, the exposure bound, sysusers and tmpfiles."""

from __future__ import annotations

import grp
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "amzguard.service"
INSTALLED_BINARY = "/usr/bin/amzguard"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed on this machine (Debian package: systemd); unit not checked",
)


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's amzguard: verify checks that the binary exists,
    and /usr/bin/amzguard (the package's) need not exist on a test machine."""
    binary = Path(sys.executable).with_name("amzguard")
    assert binary.exists(), binary
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    copy = tmp_path / "amzguard.service"
    copy.write_text(text.replace(INSTALLED_BINARY, str(binary)))
    return copy


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # --man=no: Documentation= names the man pages, which the package installs (tests/deb), not a checkout.
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(local_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_analyze
def test_exposure_is_at_most_two(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}",
         "--no-pager", str(local_unit(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for amzguard\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout


def test_unit_essentials() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "User=amzguard", "ExecReload=/bin/kill -USR1 $MAINPID", "Restart=on-failure",
                 "ReadWritePaths=-/var/spool/postfix/amzguard", "RuntimeDirectory=amzguard",
                 "StateDirectory=amzguard", f"ExecStart={INSTALLED_BINARY} run -c /etc/amzguard/amzguard.yml",
                 # stderr lines carry their priority (log_output.py, tested in test_log_targets.py) and go
                 # on to syslog as facility mail.
                 "SyslogLevelPrefix=yes", "SyslogFacility=mail"):  # fmt: skip
        assert line in text.splitlines(), line


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers/systemd-tmpfiles not installed")  # fmt: skip
def test_sysusers_and_tmpfiles_create_the_socket_directory(tmp_path: Path) -> None:
    try:
        postfix_gid = grp.getgrnam("postfix").gr_gid
    except KeyError:
        pytest.skip("no postfix group on this machine (make test installs postfix)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", name).exists():
            shutil.copy(Path("/etc", name), root / "etc" / name)
    users = subprocess.run(["systemd-sysusers", f"--root={root}", str(REPO / "systemd" / "amzguard.sysusers")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert users.returncode == 0, users.stderr
    assert re.search(r"^amzguard:x:\d+:\d+:amzguard milter:/nonexistent:/usr/sbin/nologin$",
                     (root / "etc" / "passwd").read_text(), re.M)  # fmt: skip
    files = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(REPO / "systemd" / "amzguard.tmpfiles")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert files.returncode == 0, files.stderr
    socket_dir = root / "var" / "spool" / "postfix" / "amzguard"
    mode = socket_dir.stat().st_mode
    assert oct(mode & 0o7777) == "0o2750"  # setgid: the socket inherits group postfix
    assert socket_dir.stat().st_gid == postfix_gid
    # The store's directory exists before the service first starts (optout commands, the learn pipe) and
    # with the unit's StateDirectoryMode; the config directory is the service group's.
    amzguard = re.search(r"^amzguard:x:(\d+):(\d+):", (root / "etc" / "passwd").read_text(), re.M)
    assert amzguard
    uid, gid = int(amzguard.group(1)), int(amzguard.group(2))
    store_dir = (root / "var" / "lib" / "amzguard").stat()
    assert (oct(store_dir.st_mode & 0o7777), store_dir.st_uid, store_dir.st_gid) == ("0o750", uid, gid)
    config_dir = (root / "etc" / "amzguard").stat()
    assert (oct(config_dir.st_mode & 0o7777), config_dir.st_uid, config_dir.st_gid) == ("0o750", 0, gid)


def test_state_directory_mode_matches_tmpfiles() -> None:
    """systemd resets an existing StateDirectory to StateDirectoryMode at every start: the two must agree."""
    unit = UNIT.read_text().splitlines()
    tmpfiles = (REPO / "systemd" / "amzguard.tmpfiles").read_text()
    assert "StateDirectory=amzguard" in unit
    [line] = [line for line in tmpfiles.splitlines() if line.startswith("d /var/lib/amzguard ")]
    assert f"StateDirectoryMode={line.split()[2]}" in unit


def test_one_command_path_in_unit_and_snippets() -> None:
    """The package's /usr/bin/amzguard everywhere a command is named (a venv install links
    /usr/local/bin/amzguard and edits these, docs/install.md); no venv path left."""
    unit = UNIT.read_text()
    master_cf = (REPO / "etc" / "postfix" / "amzguard-master.cf").read_text()
    assert re.findall(r"^Exec\w+=(\S+)", unit, re.M) == [INSTALLED_BINARY, INSTALLED_BINARY, "/bin/kill"]
    assert f"argv={INSTALLED_BINARY} optout learn -c /etc/amzguard/amzguard.yml" in master_cf
    assert "/opt/amzguard" not in unit + master_cf
