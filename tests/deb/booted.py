"""A copy of this machine booted with systemd as PID 1 (systemd-nspawn), for installing the Debian package.

Why a booted copy and not ``dpkg -i`` on the test machine: the package's maintainer scripts create a system
user and directories, enable and start the unit; on the host that would leave a user behind after purge,
race with other apt/dpkg runs and with a second checkout running the same test. Here the root file system is
an overlay of the host's ``/`` (lower, read-only) and a tmpfs (upper) in a mount namespace of its own, so
``dpkg -i`` and everything it does land in the tmpfs and vanish with the container. And the unit is run by a
real systemd, with its real sandbox (ProtectSystem=strict, PrivateUsers, StateDirectory, ...), not by an
imitation of it.

Directories given as ``binds`` are the host's own (bind mounts), so the host's Postfix reaches the milter's
socket and the test can see what the service wrote. Anything else the container needs from the host must be
bound too: files the host creates after the boot need not show through the overlay. By default the container
has a network namespace of its own (``--private-network``), so the milter's metrics port cannot collide with
anything on the host; a unix socket in a bound directory is reached across network namespaces.
``private_network=False`` shares the host's network (for pip, which needs the package index).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.e2e.harness import _children_of, _wait_until

#: The environment of commands run in the container: Debian's PATH for root (/etc/login.defs), not this shell's
#: (pyenv, venv).
CONTAINER_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                 "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]


HOST_STATE = ("/etc/amzguard", "/var/lib/amzguard", "/var/spool/postfix/amzguard")
"""What the package makes on a machine, hidden from the copy unless bound: the copy starts as a machine
amzguard was never installed on, whatever the host holds (``make run`` makes /var/lib/amzguard, as root, with
a store file the package's service user could not open: the system test failed on exactly that)."""


def _hide(path: str, upper: Path) -> str:
    """Shell commands that make ``path`` absent in the overlay (an overlayfs whiteout: a 0/0 character device
    in the upper layer); its parent directories are copied into the upper layer with the host's owner and
    mode, which the merged view takes from the upper layer."""
    q = shlex.quote
    steps = []
    parents = list(reversed(Path(path).parents))[1:]  # without "/"
    for parent in parents:
        target = q(f"{upper}{parent}")
        steps.append(f"{{ [ -d {target} ] || {{ mkdir {target} && chown --reference={q(str(parent))} {target}"
                     f" && chmod --reference={q(str(parent))} {target}; }}; }}")
    steps.append(f"mknod {q(f'{upper}{path}')} c 0 0")
    return f"{{ ! [ -e {q(path)} ] || {{ {' && '.join(steps)}; }}; }}"


class BootError(RuntimeError):
    """The container did not come up; the message carries its console output."""


class BootedCopy:
    """``systemd-nspawn --boot`` on an overlay of ``/``; commands run inside with :meth:`run` (nsenter)."""

    def __init__(
        self,
        workdir: Path,
        binds: Mapping[str, Path] | None = None,
        private_network: bool = True,
        hidden: Sequence[str] = HOST_STATE,
    ) -> None:
        self.workdir = workdir
        self.private_network = private_network
        self.binds = dict(binds or {})
        self.hidden = tuple(path for path in hidden if path not in self.binds)
        """Host paths the copy does not see (``HOST_STATE``; a bound one is the bind's)."""
        self.console = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None  # systemd, PID 1 inside, as the host numbers it

    def command(self) -> list[str]:
        upper, root = self.workdir / "upper", self.workdir / "root"
        upper.mkdir()
        root.mkdir()
        binds = [f"--bind={host}:{inside}" for inside, host in self.binds.items()]
        nspawn = [
            "systemd-nspawn", "--quiet", f"--directory={root}", "--register=no", "--keep-unit",
            *(["--private-network"] if self.private_network else []), *binds,
            # sysinit.target: journald, tmpfiles and sysusers, but none of the host's enabled services
            # (postfix, postgresql, ...) that booting the default target would start.
            "--boot", "--", "--unit=sysinit.target",
        ]  # fmt: skip
        q = shlex.quote
        hide = "".join(f" && {_hide(path, upper / 'u')}" for path in self.hidden)
        script = (
            f"mount -t tmpfs -o mode=0755 tmpfs {q(str(upper))} && mkdir {q(str(upper / 'u'))} {q(str(upper / 'w'))}"
            f"{hide} && mount -t overlay overlay -o lowerdir=/,upperdir={q(str(upper / 'u'))},workdir={q(str(upper / 'w'))}"
            f" {q(str(root))} && exec {shlex.join(nspawn)}"
        )
        # The mounts live in this mount namespace only and go when its last process (the container) exits.
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]

    def start(self, timeout: float = 90.0) -> BootedCopy:
        with open(self.console, "ab") as console:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            if not _wait_until(self._found_init, timeout):
                raise BootError(f"no systemd in the container after {timeout:.0f} s:\n{self.console_text()}")
            # Booted: "running", or "degraded" (a unit of the host's image failing in a container is not ours
            # to judge). "offline" until PID 1 listens on its socket, then "initializing", "starting".
            if not _wait_until(lambda: self.system_state() in ("running", "degraded"), timeout):
                raise BootError(f"system state {self.system_state()!r} after {timeout:.0f} s:\n{self.console_text()}")
        except BaseException:
            self.stop()
            raise
        return self

    def system_state(self) -> str:
        return self.run(["systemctl", "is-system-running"], check=False).stdout.strip()

    def _found_init(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise BootError(f"systemd-nspawn exited:\n{self.console_text()}")
        self.init_pid = _namespace_init(self.proc.pid)
        return self.init_pid is not None

    def run(
        self,
        args: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """``args`` inside the container (all its namespaces, its root), with :data:`CONTAINER_ENV`."""
        assert self.init_pid is not None, "not started"
        enter = ["nsenter", f"--target={self.init_pid}", "--mount", "--uts", "--ipc", "--net", "--pid",
                 "--root", "--wd", "env", "-i", *CONTAINER_ENV]  # fmt: skip
        done = subprocess.run([*enter, *args], input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{shlex.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def path(self, inside: str) -> Path:
        """A path of the container, as the host reaches it (through PID 1's root)."""
        assert self.init_pid is not None, "not started"
        return Path(f"/proc/{self.init_pid}/root") / inside.lstrip("/")

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to systemd-nspawn shuts the container down cleanly (it signals PID 1 to power off)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # PID 1 of a PID namespace takes every process of the namespace with it.
                if self.init_pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.init_pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        self.init_pid = None

    def __enter__(self) -> BootedCopy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _namespace_init(ancestor: int) -> int | None:
    """The descendant of ``ancestor`` that is PID 1 of a PID namespace of its own (``NSpid: <host> 1``)."""
    todo = [ancestor]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                if len(ids) > 1 and ids[-1] == "1":
                    return pid
        todo.extend(_children_of(pid))
    return None

