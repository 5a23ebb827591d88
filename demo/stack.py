"""The demo's throwaway mail server: a private Postfix wired to amzguard as the README says, in one directory.

Reuses the end-to-end harness (tests/e2e/harness.py: Postfix on a loopback port, smtp-sink standing in for the
internet, local mailboxes for shop.test) and the test suite's milter process (tests/support/milter_process.py),
as bench/ does. What differs from the tests: amzguard runs on the *shipped* etc/amzguard.yml, changed only
where a throwaway instance must differ (socket, store, metrics port, a review secret made for this run), and
Amazon's opt-out notices reach ``amzguard optout learn`` through a Postfix ``pipe`` transport, as an admin
would set it up.

Everything lives below one directory under /tmp (world-traversable: Postfix's delivery agents run as
``nobody``); :meth:`DemoStack.stop` stops what was started, by PID, and removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python demo/…` as well as `python -m demo`
    sys.path.insert(0, str(REPO))

from demo.story import LEARN_ADDRESS, LEARN_SERVICE  # noqa: E402
from tests.e2e.harness import PostfixInstance, make_workdir  # noqa: E402
from tests.support.milter_process import MilterProcess  # noqa: E402

SHIPPED_CONFIG = REPO / "etc" / "amzguard.yml"
TRANSPORT_MAP = REPO / "etc" / "postfix" / "amzguard-transport.regexp"
SYSTEM_PYTHON = "/usr/bin/python3"
"""Runs ``optout learn`` as the pipe user: the venv may live where ``nobody`` cannot enter (/root)."""
PIPE_USER = "nobody"


class DemoSetupError(RuntimeError):
    """The machine lacks something the demo needs; the message says what to do."""


def check_machine() -> None:
    """Fail early with the fix, rather than halfway with a Postfix error."""
    if os.geteuid() != 0:
        raise DemoSetupError("the demo starts its own Postfix instance and must run as root (sudo make demo)")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import yaml, enum; enum.StrEnum"], capture_output=True, check=False)
    if probe.returncode != 0:
        raise DemoSetupError(f"{SYSTEM_PYTHON} 3.11+ with PyYAML runs `optout learn` for Postfix: "
                             "apt-get install python3-yaml (make demo does)")  # fmt: skip


def demo_config(workdir: Path, socket: str) -> dict[str, object]:
    """The shipped config with the few values a throwaway instance must change; everything else as shipped."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["milter"]["socket"] = socket
    config["channels"]["review"].update(enabled=True, token_file=str(workdir / "review-token"))
    config["store"]["path"] = str(workdir / "store" / "amzguard.sqlite")
    config["metrics"]["listen"] = "127.0.0.1:0"  # any free port; the milter logs which
    if "target" in config.get("logging", {}):  # the demo reads amzguard's lines from its standard error
        config["logging"]["target"] = "stderr"
    return config


@dataclass
class DemoStack:
    workdir: Path
    config: Path
    secret: str
    milter: MilterProcess
    postfix: PostfixInstance

    @property
    def store_path(self) -> Path:
        return self.workdir / "store" / "amzguard.sqlite"

    def stop(self, keep_files: bool = False) -> None:
        """Stop Postfix (``postfix stop``, waiting for its daemons), the sink and the milter, by PID."""
        try:
            self.postfix.stop()
        finally:
            self.milter.stop()
            if not keep_files:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def pids(self) -> dict[str, int | None]:
        postfix = self.postfix
        return {"postfix master": postfix.master_pid(), "smtp-sink": postfix.sink.pid, "amzguard": self.milter.pid}


def _pipe_service(workdir: Path) -> str:
    """master.cf lines for the learn pipe: the README's recipe, with a copy of the package the pipe user can read."""
    return (
        f"{LEARN_SERVICE} unix -  n       n       -       1       pipe\n"
        f"  user={PIPE_USER} argv=/usr/bin/env PYTHONPATH={workdir}/pylib PYTHONDONTWRITEBYTECODE=1 {SYSTEM_PYTHON}\n"
        f"  -m amzguard optout learn -c {workdir}/amzguard.yml\n"
    )


def _prepare(workdir: Path, secret: str) -> None:
    """Files the pipe user must reach: the package, the config, the secret (group-readable, as the README
    installs it) and the store's directory (the milter, root here, gives the file it creates to the owner)."""
    nobody = pwd.getpwnam(PIPE_USER)
    shutil.copytree(REPO / "milter" / "amzguard", workdir / "pylib" / "amzguard",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    token = workdir / "review-token"
    token.write_text(secret + "\n")
    os.chown(token, 0, nobody.pw_gid)
    token.chmod(0o640)
    store = workdir / "store"
    store.mkdir()
    store.chmod(0o770)
    os.chown(store, nobody.pw_uid, nobody.pw_gid)


def start_stack() -> DemoStack:
    """Start amzguard and Postfix in a fresh directory; on any failure stop what was started and remove it."""
    workdir = make_workdir("amzguard-demo-")
    milter: MilterProcess | None = None
    postfix: PostfixInstance | None = None
    try:
        secret = secrets.token_urlsafe(18)  # 24 characters
        _prepare(workdir, secret)
        socket = f"unix:{workdir}/amzguard.sock"
        config = workdir / "amzguard.yml"
        config.write_text(yaml.safe_dump(demo_config(workdir, socket), sort_keys=False))
        config.chmod(0o644)
        milter = MilterProcess(config, socket, workdir / "amzguard.log", group="postfix").start()
        (workdir / "postfix").mkdir(mode=0o755)
        maps = f"regexp:{TRANSPORT_MAP}, inline:{{ {LEARN_ADDRESS}={LEARN_SERVICE}: }}"
        postfix = PostfixInstance(workdir / "postfix", milter=socket, transport_maps=maps,
                                  extra_master_cf=_pipe_service(workdir))  # fmt: skip
        postfix.start()
        return DemoStack(workdir, config, secret, milter, postfix)
    except BaseException:
        for started in (postfix, milter):
            if started is not None:
                with contextlib.suppress(Exception):
                    started.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
