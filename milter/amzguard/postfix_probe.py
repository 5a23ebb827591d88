"""The thin layer under ``amzguard check-postfix``: runs ``postconf``/``postmap``, reads files, asks the kernel.

Everything here only reads: ``postconf`` without ``-e``, ``postmap -q``/``-s``, plain reads; permissions of
another user are tried as that user by user_check.check_as (the same code as ``check-config --user``: a
child switched to the user, so ACLs and every group of it count). The decisions are in postfix_check.py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from . import user_check
from .config import DEFAULT_CONFIG_PATH, Config
from .postfix_check import MapError, PostfixSettings, Service, Wiring
from .user_check import Need

POSTCONF = shutil.which("postconf", path="/usr/sbin:/usr/bin:/sbin:/bin") or "postconf"
POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin:/sbin:/bin") or "postmap"
# Where an installed unit may be (systemd's search order for system units, admin's copy first).
UNIT_PATHS = tuple(
    Path(d) / "amzguard.service"
    for d in ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
              "/lib/systemd/system")
)  # fmt: skip
_TOOLS = {"postconf": POSTCONF, "postmap": POSTMAP}
DEFAULT_USER = "amzguard"
TIMEOUT = 30


class ProbeError(Exception):
    """Postfix's settings cannot be read at all (no such config directory, postconf missing)."""


def _run(tool: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """The one place that starts a program: Postfix's read-only tools, an argv list, no shell."""
    if tool not in _TOOLS:
        raise ValueError(f"check-postfix runs only {', '.join(sorted(_TOOLS))}, not {tool!r}")
    program = _TOOLS[tool]
    try:
        return subprocess.run([program, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False,
                              errors="replace")  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"{program}: {exc}") from None


def read_postfix_settings(config_dir: str | None) -> PostfixSettings:
    """``postconf -x`` (all of main.cf, defaults and ``$name`` expanded), ``-F`` and ``-xP`` (master.cf)."""
    base = ["-c", config_dir] if config_dir else []
    outputs = []
    for flags in (["-x"], ["-F"], ["-xP"]):
        done = _run("postconf", [*base, *flags])
        if done.returncode != 0:
            command = " ".join([POSTCONF, *base, *flags])
            raise ProbeError(f"{command}: {done.stderr.strip() or f'exit {done.returncode}'}")
        outputs.append(done.stdout)
    params = dict(_name_value(line) for line in outputs[0].splitlines() if "=" in line)
    fields: dict[str, dict[str, str]] = {}
    for line in outputs[1].splitlines():
        name, value = _name_value(line)
        service, _, field = name.rpartition("/")
        fields.setdefault(service, {})[field] = value
    overrides: dict[str, dict[str, str]] = {}
    for line in outputs[2].splitlines():
        name, value = _name_value(line)
        service, _, parameter = name.rpartition("/")
        overrides.setdefault(service, {})[parameter] = value
    services = tuple(
        Service(
            name=f.get("service", key.split("/")[0]),
            type=f.get("type", ""),
            chroot=f.get("chroot", "-"),
            command=f.get("command", ""),
            overrides=overrides.get(key, {}),
        )
        for key, f in fields.items()
    )
    return PostfixSettings(params=params, services=services)


def _name_value(line: str) -> tuple[str, str]:
    name, _, value = line.partition("=")
    return name.strip(), value.strip()


def unit_user(paths: tuple[Path, ...] = UNIT_PATHS) -> str:
    """``User=`` of the installed amzguard.service (the first found), else the packaged default."""
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        users = [line.split("=", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("User=")]
        return users[-1] if users and users[-1] else DEFAULT_USER
    return DEFAULT_USER


def wiring_from_config(config: Config, user: str) -> Wiring:
    config_path = config.source or DEFAULT_CONFIG_PATH
    return Wiring(
        socket=config.milter.socket,
        buyers=config.policy.buyers,
        bounce_domain=config.policy.bounce_domain,
        mixed_recipients=config.policy.mixed_recipients,
        tag_header=config.policy.review.header,
        review_enabled=config.policy.review.enabled,
        needs=tuple(user_check.needs(config, config_path)),
        user=user,
        sasl_logins=any(entry.sasl_login is not None for entry in config.policy.review.recognise),
    )


class SystemHost:
    """The real machine, through Postfix's own tools (``-c DIR``: the same main.cf the checks read)."""

    def __init__(self, config_dir: str | None) -> None:
        self.config_args = ["-c", config_dir] if config_dir else []

    def _postmap(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return _run("postmap", [*self.config_args, *args])
        except ProbeError as exc:
            raise MapError(str(exc)) from None

    def query(self, table: str, key: str) -> str | None:
        done = self._postmap("-q", key, table)
        # postmap exits 1 both for "not found" and for a fatal error: only the message tells them apart.
        problem = _problem(done.stderr)
        if problem:
            raise MapError(problem)
        if done.returncode == 0:
            return done.stdout.splitlines()[0].strip() if done.stdout.strip() else ""
        return None

    def sequence(self, table: str) -> list[tuple[str, str]]:
        done = self._postmap("-s", table)
        problem = _problem(done.stderr)
        if problem or done.returncode != 0:
            raise MapError(problem or f"postmap -s {table}: exit {done.returncode}")
        entries = []
        for line in done.stdout.splitlines():
            key, _, value = line.partition("\t")
            entries.append((key, value))
        return entries

    def read_text(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8", errors="replace")

    def user_exists(self, user: str) -> bool:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return False
        return True

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def executable(self, path: str) -> bool:
        return os.path.isfile(path) and os.access(path, os.X_OK)

    def check_as(self, user: str, needs: list[Need]) -> list[user_check.Finding]:
        return user_check.check_as(user, needs)


_PROBLEM_MARKERS = ("fatal:", "error:")


def _problem(stderr: str) -> str:
    """postmap's fatal or error message (its warnings, e.g. a .db older than its source, are no failure)."""
    for line in reversed(stderr.splitlines()):
        for marker in _PROBLEM_MARKERS:
            if marker in line:
                return line.split(marker, 1)[1].strip()
    return ""
