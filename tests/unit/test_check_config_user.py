"""``check-config --user NAME`` sees what the service user cannot read or write, also when root runs it;
warnings say ``warning:``."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NOBODY = pwd.getpwnam("nobody")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amzguard", *args], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


@pytest.fixture
def etc() -> Iterator[Path]:
    # Not pytest's tmp_path: it lives below a 0700 directory that nobody could not enter at all.
    path = Path(tempfile.mkdtemp(prefix="amzguard-user-check-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def setup(etc: Path, token_mode: int, store_owner: int) -> Path:
    token = etc / "review-token"
    token.write_text("abcdefghijklmnopqrstuvwx\n")
    token.chmod(token_mode)
    store = etc / "store"
    store.mkdir(mode=0o750)
    os.chown(store, store_owner, -1)
    config = etc / "amzguard.yml"
    config.write_text(f"milter:\n  socket: unix:{store}/amzguard.sock\nchannels:\n  review:\n    enabled: true\n"
                      f"    token_file: review-token\nstore:\n  path: store/amzguard.sqlite\n")  # fmt: skip
    config.chmod(0o644)
    return config


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_root_sees_what_the_service_user_cannot_read_or_write(etc: Path) -> None:
    config = setup(etc, token_mode=0o600, store_owner=0)
    as_root = run_cli("check-config", "-c", str(config))
    assert as_root.returncode == 0 and as_root.stdout.startswith("configuration OK")
    done = run_cli("check-config", "-c", str(config), "--user", "nobody")
    assert done.returncode == 1, done.stderr
    assert done.stdout == f"configuration valid, but not usable by user nobody: {config}\n"
    lines = done.stderr.splitlines()
    assert (f"amzguard: error: user nobody cannot read (Permission denied): {etc}/review-token "
            "(channels.review.token_file)") in lines  # fmt: skip
    assert f"amzguard: error: user nobody cannot create files in: {etc}/store (store.path's directory)" in lines
    # Fixed as the install steps say (group of the service user, or its own directory): OK.
    os.chown(etc / "review-token", 0, NOBODY.pw_gid)
    (etc / "review-token").chmod(0o640)
    os.chown(etc / "store", NOBODY.pw_uid, -1)
    fixed = run_cli("check-config", "-c", str(config), "--user", "nobody")
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.startswith(f"configuration OK: {config} (user nobody can read it")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_a_missing_store_directory_is_a_warning_and_a_missing_user_an_error(etc: Path) -> None:
    config = setup(etc, token_mode=0o644, store_owner=0)
    config.write_text(config.read_text().replace("store/amzguard.sqlite", "later/amzguard.sqlite"))
    done = run_cli("check-config", "-c", str(config), "--user", "root")
    assert done.returncode == 0, done.stderr
    assert f"amzguard: warning: user root finds no such directory: {etc}/later (store.path's directory)" in done.stderr
    # The world-readable secret warns, with the prefix every warning has.
    assert (f"amzguard: warning: {etc}/review-token: channels.review.token_file is readable by every user; chmod o-r "
            "it (it holds the review secret)") in done.stderr.splitlines()  # fmt: skip
    unknown = run_cli("check-config", "-c", str(config), "--user", "no-such-user-x")
    assert unknown.returncode == 2 and "no such user: no-such-user-x" in unknown.stderr


def test_every_warning_line_says_warning(etc: Path) -> None:
    config = setup(etc, token_mode=0o644, store_owner=os.geteuid())
    done = run_cli("-c", str(config), "check-config")
    assert done.returncode == 0
    warnings = [line for line in done.stderr.splitlines() if "readable by every user" in line]
    assert warnings and all(line.startswith("amzguard: warning: ") for line in warnings)
