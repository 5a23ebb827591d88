"""``amzguard check-postfix`` against real Postfix config directories, one planted fault each.

The config directories are written the way the harness writes them for a running Postfix (main.cf and
master.cf, own queue directory); ``postconf -c DIR`` and ``postmap -c DIR`` read them without a running
Postfix, so nothing is started here. Every case runs the real command as a process and checks its exit
status and output lines; the user is ``nobody``, and permissions are tried as that user (user_check).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from amzguard.postfix_check import transport_lookup
from amzguard.postfix_probe import SystemHost, read_postfix_settings
from amzguard.postfix_syntax import split_list
from tests.e2e.harness import POSTCONF, PostfixInstance, make_workdir
from tests.support.milter_process import MilterProcess

REPO = Path(__file__).resolve().parents[2]
TRANSPORT_MAP = REPO / "etc" / "postfix" / "amzguard-transport.regexp"
HEADER_CHECKS = REPO / "etc" / "postfix" / "amzguard-header-checks.regexp"
AMZGUARD = Path(sys.executable).parent / "amzguard"
NOBODY = "nobody"


@dataclass
class Case:
    """A Postfix config directory and an amzguard config, wired correctly unless a test breaks them."""

    workdir: Path
    postfix: PostfixInstance
    config: Path

    @property
    def queue(self) -> Path:
        return self.postfix.queue_dir

    @property
    def socket(self) -> Path:
        return self.queue / "amzguard" / "amzguard.sock"

    @property
    def store_dir(self) -> Path:
        return self.workdir / "store"

    def write(self, main: dict[str, str] | None = None, master: str = "", **amzguard: object) -> None:
        self.postfix.extra_main_cf.update(main or {})
        self.postfix.extra_master_cf = master if master else self.pipe()
        self.postfix._write_config()
        if amzguard:
            data = yaml.safe_load(self.config.read_text())
            data.update(amzguard)
            self.config.write_text(yaml.safe_dump(data))

    def pipe(self, argv0: Path = AMZGUARD, user: str = NOBODY) -> str:
        return (f"amzguard-optout unix - n n - 1 pipe\n"
                f"  user={user} argv={argv0} -c {self.config} optout learn\n")  # fmt: skip

    def postconf(self, *args: str) -> None:
        subprocess.run([POSTCONF, "-c", str(self.postfix.config_dir), *args], check=True, capture_output=True)

    def check(self) -> tuple[int, list[str]]:
        done = subprocess.run(
            [sys.executable, "-m", "amzguard", "check-postfix", "-c", str(self.config),
             "--postfix-config", str(self.postfix.config_dir), "--user", NOBODY],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert not done.stderr, done.stderr
        return done.returncode, done.stdout.splitlines()


@pytest.fixture
def case() -> Iterator[Case]:
    workdir = make_workdir("amzguard-check-")
    postfix = PostfixInstance(
        workdir,
        milter="unix:amzguard/amzguard.sock",  # relative to the queue directory: right chrooted and not
        transport_maps=f"regexp:{TRANSPORT_MAP}",
        extra_main_cf={
            "smtp_header_checks": f"regexp:{HEADER_CHECKS}",
            "smtp_nested_header_checks": f"regexp:{HEADER_CHECKS}",
        },
    )
    postfix.smtp_port = 2525  # never started: only postconf reads it
    postfix.config_dir.mkdir(parents=True)
    nobody = (pwd.getpwnam(NOBODY).pw_uid, grp.getgrnam("nogroup").gr_gid)
    store = workdir / "store"
    store.mkdir()
    os.chown(store, *nobody)
    store.chmod(0o750)
    # As systemd/amzguard.tmpfiles makes it: the milter's, group postfix, setgid (the socket gets group postfix).
    sockets = postfix.queue_dir / "amzguard"
    sockets.mkdir(parents=True)
    os.chown(sockets, nobody[0], grp.getgrnam("postfix").gr_gid)
    sockets.chmod(0o2750)
    token = workdir / "review-token"
    token.write_text("c4se-review-token-81Jx0q\n")
    os.chown(token, 0, nobody[1])
    token.chmod(0o640)
    config = workdir / "amzguard.yml"
    config.write_text(yaml.safe_dump({
        "milter": {"socket": f"unix:{postfix.queue_dir}/amzguard/amzguard.sock"},
        "channels": {"review": {"enabled": True, "token_file": str(token)}},
        "store": {"path": str(workdir / "store" / "amzguard.sqlite")},
        "metrics": {"listen": "127.0.0.1:0"},  # tests run side by side: any free port
    }))  # fmt: skip
    config.chmod(0o644)
    found = Case(workdir, postfix, config)
    found.write()
    yield found
    shutil.rmtree(workdir, ignore_errors=True)


def errors_about(lines: list[str], parameter: str) -> list[str]:
    return [line for line in lines if line.startswith(f"amzguard: error: {parameter}:")]


def test_clean_config_exits_0(case: Case) -> None:
    assert case.check() == (0, [])


def test_clean_config_with_a_running_milter_exits_0(case: Case) -> None:
    """amzguard running with group postfix, so its 0660 socket is Postfix's to connect to (as root: nobody
    cannot run this venv's interpreter; the files are still checked as nobody)."""
    milter = MilterProcess(case.config, f"unix:{case.socket}", case.workdir / "amzguard.log", group="postfix")
    with milter:
        assert case.socket.is_socket()
        assert case.check() == (0, [])


def test_socket_postfix_cannot_connect_to(case: Case) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(case.socket))
        os.chown(case.socket, pwd.getpwnam(NOBODY).pw_uid, -1)
        case.socket.chmod(0o600)
        status, lines = case.check()
    assert status == 1
    [line] = lines
    assert line.startswith(f"amzguard: error: milter.socket: Postfix's mail_owner postfix cannot connect to: {case.socket};")


def test_clean_chrooted_config_exits_0(case: Case) -> None:
    """Debian's master.cf runs smtpd and cleanup chrooted; the relative socket path is right there too."""
    case.postconf("-F", "127.0.0.1:2525/inet/chroot = y", "cleanup/unix/chroot = y")
    assert case.check() == (0, [])


def test_wrong_socket(case: Case) -> None:
    case.write({"smtpd_milters": f"unix:{case.queue}/other/milter.sock"})
    status, lines = case.check()
    assert status == 1
    assert len(lines) == 1, lines
    assert "no milter in it reaches amzguard's socket" in errors_about(lines, "smtpd_milters")[0]


def test_chrooted_absolute_path(case: Case) -> None:
    case.write({"non_smtpd_milters": f"unix:{case.socket}"})
    case.postconf("-F", "cleanup/unix/chroot = y")
    status, lines = case.check()
    assert status == 1
    [line] = errors_about(lines, "non_smtpd_milters")
    assert f"opened inside the chroot of master.cf service cleanup/unix (chroot column y), i.e. at {case.queue}{case.socket}" in line
    assert len(lines) == 1, lines


def test_default_action_accept(case: Case) -> None:
    case.write({"milter_default_action": "accept"})
    status, lines = case.check()
    assert status == 1
    assert errors_about(lines, "milter_default_action") == [
        "amzguard: error: milter_default_action: accept: while amzguard is down or misbehaves, mail passes"
        " unchecked; set milter_default_action = tempfail"
    ]
    assert len(lines) == 1, lines


def test_per_milter_default_action_accept(case: Case) -> None:
    case.write({"smtpd_milters": "{ unix:amzguard/amzguard.sock, default_action=accept }"})
    status, lines = case.check()
    assert status == 1 and len(lines) == 1
    assert "default_action=accept in { unix:amzguard/amzguard.sock, default_action=accept }" in errors_about(lines, "smtpd_milters")[0]


def test_missing_transport_map_entry(case: Case) -> None:
    # The shipped map without the opted-out line and without its catch-all for amzguard.invalid.
    kept = [line for line in TRANSPORT_MAP.read_text().splitlines()
            if "opted-out" not in line and "(^|[@.])" not in line]  # fmt: skip
    partial = case.workdir / "transport.regexp"
    partial.write_text("\n".join(kept) + "\n")
    case.write({"transport_maps": f"regexp:{partial}"})
    status, lines = case.check()
    assert status == 1
    missing = errors_about(lines, "transport_maps")
    assert any("stand-in q7x=marketplace.amazon.de@opted-out.amzguard.invalid to error:" in line for line in missing)
    assert not any("buyer-mail" in line for line in missing)  # that one the map still bounces
    assert len(lines) == len(missing)


def test_virtual_alias_to_a_buyer(case: Case) -> None:
    virtual = case.workdir / "virtual"
    virtual.write_text("orders@shop.test   shop@shop.test, Q7x@Marketplace.Amazon.de\n")
    subprocess.run(["postmap", "-c", str(case.postfix.config_dir), f"hash:{virtual}"], check=True)
    virtual.unlink()  # only the .db is left: listed with postmap -s, as Postfix reads it
    case.write({"virtual_alias_maps": f"hash:{virtual}"})
    status, lines = case.check()
    assert status == 1
    [line] = lines
    assert line.startswith("amzguard: error: virtual_alias_maps: ")
    assert "Q7x@Marketplace.Amazon.de (entry orders@shop.test)" in line


def test_bcc_map_to_a_buyer(case: Case) -> None:
    bcc = case.workdir / "bcc.regexp"
    bcc.write_text("/^(.+)@shop\\.test$/  blacklisted-$1@amazon.fr\n")
    case.write({"sender_bcc_maps": f"regexp:{bcc}"})
    status, lines = case.check()
    assert status == 1
    [line] = lines
    assert line.startswith("amzguard: error: sender_bcc_maps: ") and "blacklisted-x@amazon.fr" in line


def test_unlistable_mapping_is_a_warning(case: Case) -> None:
    case.write({"virtual_alias_maps": f"ldap:{case.workdir}/ldap-aliases.cf"})
    status, lines = case.check()
    assert status == 1
    [line] = lines
    assert line.startswith("amzguard: warning: virtual_alias_maps: ldap:")


def test_missing_pipe_binary(case: Case) -> None:
    case.write(master=case.pipe(argv0=case.workdir / "bin" / "amzguard"))
    status, lines = case.check()
    assert status == 1
    [line] = lines
    assert line.startswith("amzguard: error: master.cf amzguard-optout/unix: argv=")
    assert "is no executable file" in line


def test_store_directory_not_writable_for_the_user(case: Case) -> None:
    os.chown(case.store_dir, 0, 0)
    case.store_dir.chmod(0o755)
    status, lines = case.check()
    assert status == 1
    [line] = lines
    assert line.startswith(f"amzguard: error: store.path's directory: the milter's user nobody cannot create files in:"
                           f" {case.store_dir}; chown it to nobody")  # fmt: skip


def test_secret_not_readable_for_the_user(case: Case) -> None:
    (case.workdir / "review-token").chmod(0o600)
    status, lines = case.check()
    assert status == 1
    [line] = lines
    assert line.startswith("amzguard: error: channels.review.token_file: the milter's user nobody cannot read")


def test_missing_header_check(case: Case) -> None:
    case.write({"smtp_nested_header_checks": ""})
    status, lines = case.check()
    assert status == 1
    [line] = lines
    assert line.startswith("amzguard: error: smtp_nested_header_checks: no rule IGNOREs the X-Amzguard-Channel: header")


def test_every_fault_at_once(case: Case) -> None:
    """A config with nothing right: each fault still gets its own line (and nothing crashes)."""
    case.write({"smtpd_milters": "", "non_smtpd_milters": "inet:127.0.0.1:1", "milter_default_action": "accept",
                "transport_maps": "", "smtp_header_checks": "", "always_bcc": "q7x@marketplace.amazon.de"},
               master="# no optout pipe\n")  # fmt: skip
    status, lines = case.check()
    assert status == 1
    for parameter in ("smtpd_milters", "non_smtpd_milters", "milter_default_action", "transport_maps",
                      "smtp_header_checks", "always_bcc"):  # fmt: skip
        assert errors_about(lines, parameter), (parameter, lines)
    assert "amzguard: warning: master.cf: no pipe service runs `amzguard optout learn`" in "\n".join(lines)


def test_unreadable_postfix_config_is_exit_2(case: Case) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "amzguard", "check-postfix", "-c", str(case.config),
         "--postfix-config", str(case.workdir / "nonexistent")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("amzguard: fatal: cannot read Postfix's settings: ")
    assert done.stdout == ""


DEBIAN_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")


def _debian_master_cf(case: Case) -> None:
    """Debian's own master.cf (chroot y for smtpd, cleanup and smtp) plus the optout pipe."""
    (case.postfix.config_dir / "master.cf").write_text(DEBIAN_MASTER_CF.read_text() + case.pipe())


def test_debian_master_cf_with_the_readme_wiring_is_clean(case: Case) -> None:
    _debian_master_cf(case)
    assert case.check() == (0, [])


def test_debian_master_cf_with_absolute_socket_paths(case: Case) -> None:
    case.write({"smtpd_milters": f"unix:{case.socket}", "non_smtpd_milters": f"unix:{case.socket}"})
    _debian_master_cf(case)
    status, lines = case.check()
    assert status == 1
    assert [line.split(":")[2].strip() for line in lines] == ["smtpd_milters", "non_smtpd_milters"]
    assert "master.cf service smtp/inet (chroot column y)" in lines[0]
    assert "master.cf service cleanup/unix (chroot column y)" in lines[1]
    assert all(line.endswith("= unix:amzguard/amzguard.sock") for line in lines)


def test_transport_lookup_agrees_with_postfix() -> None:
    """The stand-in lookup (trivial-rewrite's order, emulated with postmap -q) against a running Postfix:
    for each transport_maps setting, Postfix's smtpd refuses a stand-in as undeliverable (its resolver
    found the error transport) exactly when transport_lookup answers ``error:``."""
    workdir = make_workdir("amzguard-check-oracle-")
    postfix = PostfixInstance(workdir)
    tables = {
        "dot": ".amzguard.invalid error:5.7.1 refused (dot)\n",
        "nodot": "amzguard.invalid error:5.7.1 refused (no dot)\n",
        "star": "* error:5.7.1 refused (star)\n",
    }
    for name, text in tables.items():
        (workdir / name).write_text(text)
    catchall = workdir / "catchall.regexp"
    settings = [
        {"transport_maps": f"regexp:{TRANSPORT_MAP}"},
        {"transport_maps": f"hash:{workdir}/dot"},
        {"transport_maps": f"hash:{workdir}/nodot"},  # a parent domain needs the dot here ...
        {"transport_maps": f"hash:{workdir}/nodot",  # ... unless transport_maps matches subdomains
         "parent_domain_matches_subdomains": "relay_domains, transport_maps"},
        {"transport_maps": f"regexp:{catchall}, regexp:{TRANSPORT_MAP}"},  # an earlier table wins
        {"transport_maps": f"hash:{workdir}/star"},
    ]  # fmt: skip
    verdicts = []
    try:
        with postfix:
            catchall.write_text(f"/./ relay:[127.0.0.1]:{postfix.sink.port}\n")
            for name in tables:
                subprocess.run(["postmap", "-c", str(postfix.config_dir), f"hash:{workdir}/{name}"], check=True)
            for number, change in enumerate(settings):
                postfix.postconf({"parent_domain_matches_subdomains": "relay_domains", **change})
                postfix.reload()
                address = f"case{number}=marketplace.amazon.de@opted-out.amzguard.invalid"
                # smtpd asks trivial-rewrite at RCPT: an error: route is refused there with the table's text.
                result = postfix.smtp("shop@shop.test", [address], f"Subject: oracle {number}\r\n\r\nx\r\n")
                refused = result.rejected.get(address)
                assert refused is None or (refused[0] == 550 and "refused" in refused[1]), refused
                pf = read_postfix_settings(str(postfix.config_dir))
                found = transport_lookup(pf, split_list(pf.params["transport_maps"]), address,
                                         SystemHost(str(postfix.config_dir)))  # fmt: skip
                ours = found is not None and found[0].split(":", 1)[0] == "error"
                verdicts.append((number, refused is not None, ours))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert [(n, real) for n, real, _ in verdicts] == [(0, True), (1, True), (2, False), (3, True), (4, False), (5, True)]
    assert all(real == ours for _, real, ours in verdicts), verdicts
