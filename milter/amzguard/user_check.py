"""``amzguard check-config --user NAME``: can that user read the config and its secrets and write the store?

A config that root reads fine may still fail the service: the review secret readable by root only gives
``channels.review.token_file: expected a readable file`` at the milter's start, a store directory owned by
root gives ``451 4.7.1`` for every review request. Root cannot see that with its own permissions, so the
checks run in a child process that has switched to the user (its groups included), the way the service
and the pipe transport will run; a user checking itself runs them in-process. Nothing is written: a
directory is checked with ``access(2)`` as that user, a file by opening it for reading.
"""

from __future__ import annotations

import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from .config import Config


class UserCheckError(Exception):
    """The check itself cannot run (unknown user, not allowed to switch to it)."""


@dataclass(frozen=True, slots=True)
class Need:
    what: str
    """Which key or file this is, for the message: ``channels.review.token_file``."""
    path: str
    access: str
    """``read`` (a file), ``write`` (a directory new files are created in), ``read-write`` (a file) or
    ``connect`` (a unix socket: connect(2) needs write permission on it)."""
    optional: bool = False
    """A directory that may be created later (by systemd's RuntimeDirectory=/StateDirectory=)."""


@dataclass(frozen=True, slots=True)
class Finding:
    need: Need
    problem: str
    fatal: bool

    def text(self, user: str) -> str:
        return f"user {user} {self.problem}: {self.need.path} ({self.need.what})"


CONFIG_NEED = "the configuration file"


def needs(config: Config, config_path: Path) -> list[Need]:
    """What the service user must be able to do with this configuration."""
    result = [Need(CONFIG_NEED, str(config_path), "read")]
    result += [Need(secret.key, str(secret.path), "read") for secret in config.secret_files]
    store = config.store.path
    if not config.store.url:  # a database's rights are the database's business (amzguard store status)
        result.append(Need("store.path's directory", str(store.parent), "write", optional=True))
        if store.exists():
            result.append(Need("store.path", str(store), "read-write"))
    socket = config.milter.socket
    if socket.startswith(("unix:", "local:")):
        result.append(Need("milter.socket's directory", str(Path(socket.partition(":")[2]).parent), "write",
                           optional=True))  # fmt: skip
    if config.learn.keep_unknown is not None:
        result.append(Need("optout.learn.keep_unknown", str(config.learn.keep_unknown), "write", optional=True))
    return result


# access(2) mode and the words for a failure, by Need.access ("write": a directory to create files in).
_MODES = {"read-write": (os.R_OK | os.W_OK, "cannot read and write"), "connect": (os.W_OK, "cannot connect to")}


def _check(need: Need) -> Finding | None:
    path = need.path
    if need.access == "read":
        try:
            with open(path, "rb"):
                return None
        except OSError as exc:
            return Finding(need, f"cannot read ({exc.strerror})", True)
    if not os.path.exists(path):
        return Finding(need, "finds no such directory", not need.optional)
    mode, verb = _MODES.get(need.access, (os.W_OK | os.X_OK, "cannot create files in"))
    if not os.access(path, mode):
        return Finding(need, verb, True)
    return None



def check_as(user: str, wanted: list[Need]) -> list[Finding]:
    """Run the checks as ``user``: in this process if we are that user, else (as root) in a child."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise UserCheckError(f"no such user: {user}") from None
    if os.geteuid() == account.pw_uid:
        return [f for f in map(_check, wanted) if f is not None]
    if os.geteuid() != 0:
        raise UserCheckError(f"only root or {user} itself can check as {user}")
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the user, check, report as JSON lines, exit without clean-up
        status = 0
        try:
            os.close(reader)
            os.setgroups(os.getgrouplist(user, account.pw_gid))
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            lines = [json.dumps([wanted.index(f.need), f.problem, f.fatal]) for f in map(_check, wanted) if f]
            os.write(writer, ("\n".join(lines) + "\n").encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as stream:
        output = stream.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise UserCheckError(f"cannot switch to user {user} (uid {account.pw_uid}, gid {account.pw_gid})")
    findings = []
    for line in filter(None, output.splitlines()):
        index, problem, fatal = json.loads(line)
        findings.append(Finding(wanted[index], problem, fatal))
    return findings
