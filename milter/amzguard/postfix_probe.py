"""The thin layer under ``amzguard check-postfix``: runs ``postconf``/``postmap``, reads files, asks the kernel.

Everything here only reads: ``postconf`` without ``-e``, ``postmap -q``/``-s``, ``stat``; permissions of
another user are tried by running ``test`` as that user (``setpriv``, root only), so ACLs and the real
group list count as they will for the milter. The decisions are in postfix_check.py.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path, PurePosixPath

import yaml

from .config import Config
from .postfix_check import MapError, PostfixSettings, Service, Wiring
from .privacy import AddressStyle

POSTCONF = shutil.which("postconf", path="/usr/sbin:/usr/bin:/sbin:/bin") or "postconf"
POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin:/sbin:/bin") or "postmap"
SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
TEST = shutil.which("test", path="/usr/bin:/bin") or "/usr/bin/test"
# Where an installed unit may be (systemd's search order for system units, admin's copy first).
UNIT_PATHS = tuple(
    Path(d) / "amzguard.service"
    for d in ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
              "/lib/systemd/system")
)  # fmt: skip
_TOOLS = {"postconf": POSTCONF, "postmap": POSTMAP, "setpriv": SETPRIV}
DEFAULT_USER = "amzguard"
TIMEOUT = 30


class ProbeError(Exception):
    """Postfix's settings cannot be read at all (no such config directory, postconf missing)."""


def _run(tool: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """The one place that starts a program: Postfix's read-only tools and setpriv, an argv list, no shell."""
    if tool not in _TOOLS:
        raise ValueError(f"check-postfix runs only {', '.join(sorted(_TOOLS))}, not {tool!r}")
    program = _TOOLS[tool]
    if program is None:
        raise ProbeError(f"{tool}: not installed")
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


def secret_files(config: Config) -> tuple[tuple[str, PurePosixPath], ...]:
    """The secret files the milter reads with this config: the review token (channel on) and the log hash
    key (hashed addresses). config.py keeps only their contents, so the paths come from the YAML again,
    resolved the way config._read_token resolves them (relative to the config file)."""
    if config.source is None:
        return ()
    try:
        data = yaml.safe_load(Path(config.source).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return ()  # load_config read it a moment ago; nothing more to say here
    review = ((data.get("channels") or {}).get("review") or {}) if isinstance(data, dict) else {}
    logging_section = (data.get("logging") or {}) if isinstance(data, dict) else {}
    wanted = []
    if config.policy.review.enabled and review.get("token_file"):
        wanted.append(("channels.review.token_file", str(review["token_file"])))
    if config.log_addresses.style is AddressStyle.HASHED and logging_section.get("hash_key_file"):
        wanted.append(("logging.hash_key_file", str(logging_section["hash_key_file"])))
    base = Path(config.source).parent
    return tuple((key, PurePosixPath(base / path)) for key, path in wanted)


def wiring_from_config(config: Config, user: str) -> Wiring:
    return Wiring(
        socket=config.milter.socket,
        buyers=config.policy.buyers,
        bounce_domain=config.policy.bounce_domain,
        mixed_recipients=config.policy.mixed_recipients,
        tag_header=config.policy.review.header,
        review_enabled=config.policy.review.enabled,
        store_path=PurePosixPath(config.store.path),
        config_path=PurePosixPath(config.source) if config.source is not None else None,
        secret_files=secret_files(config),
        user=user,
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
        return _ids(user) is not None

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def executable(self, path: str) -> bool:
        return os.path.isfile(path) and os.access(path, os.X_OK)

    def user_can(self, user: str, path: str, access: str) -> bool:
        ids = _ids(user)
        if ids is None:
            return False
        uid, gid, groups = ids
        if uid == os.geteuid():
            return all(os.access(path, _ACCESS_FLAGS[letter]) for letter in access)
        if os.geteuid() == 0 and SETPRIV:
            # The kernel's answer (ACLs, every group of the user): `test` run as that user, changes nothing.
            expression: list[str] = []
            for letter in access:
                expression += [*(["-a"] if expression else []), f"-{letter}", path]
            done = _run("setpriv", [f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--", TEST, *expression])
            return done.returncode == 0
        return permitted(path, uid, {gid, *groups}, access)


_ACCESS_FLAGS = {"r": os.R_OK, "w": os.W_OK, "x": os.X_OK}
_PROBLEM_MARKERS = ("fatal:", "error:")


def _problem(stderr: str) -> str:
    for line in reversed(stderr.splitlines()):
        for marker in _PROBLEM_MARKERS:
            if marker in line:
                return line.split(marker, 1)[1].strip()
    return ""


def _ids(user: str) -> tuple[int, int, set[int]] | None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    groups = {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    return entry.pw_uid, entry.pw_gid, groups


def mode_permits(mode: int, owner: int, group: int, uid: int, gids: set[int], access: str) -> bool:
    """Unix permission bits alone (no ACLs): the owner's bits for the owner, else the group's, else other's."""
    if uid == 0:
        return "x" not in access or bool(mode & 0o111) or stat.S_ISDIR(mode)
    shift = 6 if uid == owner else 3 if group in gids else 0
    bits = {"r": 4, "w": 2, "x": 1}
    return all(mode >> shift & bits[letter] for letter in access)


def permitted(path: str, uid: int, gids: set[int], access: str) -> bool:
    """Without root to try it: search permission on every parent, then ``access`` on the path itself."""
    target = Path(path)
    try:
        for parent in reversed(target.parents):
            st = parent.stat()
            if not mode_permits(st.st_mode, st.st_uid, st.st_gid, uid, gids, "x"):
                return False
        st = target.stat()
    except OSError:
        return False
    return mode_permits(st.st_mode, st.st_uid, st.st_gid, uid, gids, access)
