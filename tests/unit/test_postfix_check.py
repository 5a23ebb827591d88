"""check-postfix's checks on made-up postconf output and a fake host (no Postfix, no files)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amzguard.address import BuyerPatterns
from amzguard.config import DEFAULT_MARKED_PREFIXES, DEFAULT_RELAY_DOMAINS
from amzguard.policy import MixedRecipients, Reason
from amzguard.user_check import CONFIG_NEED, Need, UserCheckError
from amzguard.user_check import Finding as UserFinding
from amzguard.postfix_check import (
    Finding,
    MapError,
    PostfixSettings,
    Service,
    Severity,
    Wiring,
    check_postfix,
    stand_in_addresses,
)
from amzguard.postfix_syntax import (
    Endpoint,
    inet_meets,
    libmilter_endpoint,
    parse_milter_list,
    postfix_endpoint,
    postfix_spelling,
    result_addresses,
    socket_file,
    split_list,
)

QUEUE = "/var/spool/postfix"
SOCKET = f"{QUEUE}/amzguard/amzguard.sock"
TRANSPORT = "regexp:/etc/postfix/amzguard-transport.regexp"
HEADERS = "regexp:/etc/postfix/amzguard-header-checks.regexp"
AMZGUARD = "/opt/amzguard/bin/amzguard"
PIPE = f"pipe flags=R user=amzguard argv={AMZGUARD} -c /etc/amzguard/amzguard.yml optout learn"

WIRING = Wiring(
    socket=f"unix:{SOCKET}",
    buyers=BuyerPatterns(marked_prefixes=DEFAULT_MARKED_PREFIXES, relay_domains=DEFAULT_RELAY_DOMAINS),
    bounce_domain="amzguard.invalid",
    mixed_recipients=MixedRecipients.BOUNCE,
    tag_header="X-Amzguard-Channel",
    review_enabled=True,
    needs=(
        Need(CONFIG_NEED, "/etc/amzguard/amzguard.yml", "read"),
        Need("channels.review.token_file", "/etc/amzguard/review-token", "read"),
        Need("store.path's directory", "/var/lib/amzguard", "write", optional=True),
        Need("milter.socket's directory", f"{QUEUE}/amzguard", "write", optional=True),
    ),
    user="amzguard",
)


@dataclass
class FakeHost:
    """Tables as dicts (exact keys, listable) or lists of (regex, result) (pattern tables); files; access."""

    tables: dict[str, dict[str, str] | list[tuple[str, str]]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    users: set[str] = field(default_factory=lambda: {"amzguard", "postfix"})
    denied: set[tuple[str, str]] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    unswitchable: set[str] = field(default_factory=set)
    executables: set[str] = field(default_factory=lambda: {AMZGUARD})
    queries: list[tuple[str, str]] = field(default_factory=list)

    def query(self, table: str, key: str) -> str | None:
        self.queries.append((table, key))
        if table not in self.tables:
            raise MapError(f"open {table.split(':', 1)[1]}: No such file or directory")
        entries = self.tables[table]
        if isinstance(entries, dict):
            return entries.get(key.lower())
        return next((value for pattern, value in entries if re.search(pattern, key, re.I)), None)

    def sequence(self, table: str) -> list[tuple[str, str]]:
        entries = self.tables.get(table)
        if not isinstance(entries, dict):
            raise MapError("sequence operation is not supported")
        return list(entries.items())

    def read_text(self, path: str) -> str:
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory")
        return self.files[path]

    def user_exists(self, user: str) -> bool:
        return user in self.users

    def check_as(self, user: str, needs: list[Need]) -> list[UserFinding]:
        """As user_check._check would answer: missing paths, then denied (user, path) pairs."""
        if user in self.unswitchable:
            raise UserCheckError(f"only root or {user} itself can check as {user}")
        found = []
        for need in needs:
            if need.path in self.missing:
                found.append(UserFinding(need, "finds no such directory", not need.optional))
            elif (user, need.path) in self.denied:
                found.append(UserFinding(need, f"cannot {need.access}", True))
        return found

    def exists(self, path: str) -> bool:
        return path not in self.missing

    def executable(self, path: str) -> bool:
        return path in self.executables


SHIPPED_TRANSPORT = [
    (r"@buyer-mail\.amzguard\.invalid$", "error:5.7.1 Amazon forbids"),
    (r"(^|[@.])amzguard\.invalid$", "error:5.7.1 Refused by amzguard"),
]


def clean_host() -> FakeHost:
    return FakeHost(
        tables={
            TRANSPORT: list(SHIPPED_TRANSPORT),
            HEADERS: [(r"^X-Amzguard-Channel:", "IGNORE")],
        }
    )


def services(smtpd_chroot: str = "y", **overrides: dict[str, str]) -> tuple[Service, ...]:
    """Debian's chrooted smtpd, cleanup and smtp, plus the optout pipe."""
    return (
        Service("smtp", "inet", smtpd_chroot, "smtpd", overrides.get("smtp", {})),
        Service("cleanup", "unix", "y", "cleanup", overrides.get("cleanup", {})),
        Service("smtp", "unix", "y", "smtp", overrides.get("smtp_client", {})),
        Service("amzguard-optout", "unix", "n", PIPE),
    )


def settings(smtpd_chroot: str = "y", overrides: dict[str, dict[str, str]] | None = None, **params: str) -> PostfixSettings:
    base = {
        "compatibility_level": "3.6",
        "queue_directory": QUEUE,
        "smtpd_milters": "unix:amzguard/amzguard.sock",
        "non_smtpd_milters": "unix:amzguard/amzguard.sock",
        "milter_default_action": "tempfail",
        "transport_maps": TRANSPORT,
        "smtp_header_checks": HEADERS,
        "smtp_nested_header_checks": HEADERS,
        "cleanup_service_name": "cleanup",
        "parent_domain_matches_subdomains": "debug_peer_list,relay_domains",
        "alias_maps": "",
    }
    base.update(params)
    return PostfixSettings(params=base, services=services(smtpd_chroot, **(overrides or {})))


def run(pf: PostfixSettings, host: FakeHost | None = None, wiring: Wiring = WIRING) -> list[Finding]:
    return check_postfix(pf, wiring, host or clean_host())


def lines(findings: list[Finding]) -> str:
    return "\n".join(f.line() for f in findings)


# ------------------------------------------------------------------ syntax


def test_split_list_keeps_brace_groups_whole() -> None:
    text = "{ unix:/a/b, default_action=accept },inet:127.0.0.1:1  inline:{ a=b, {c = d} } , x"
    assert split_list(text) == ["{ unix:/a/b, default_action=accept }", "inet:127.0.0.1:1", "inline:{ a=b, {c = d} }", "x"]


@given(st.lists(st.from_regex(r"[a-z0-9:/._-]{1,12}", fullmatch=True), max_size=6), st.data())
def test_split_list_splits_at_any_separator_run(items: list[str], data: st.DataObject) -> None:
    separators = [data.draw(st.from_regex(r"[, \t\n]{1,3}", fullmatch=True)) for _ in items]
    text = "".join(sep + item for sep, item in zip(separators, items, strict=True))
    assert split_list(text) == items


def test_milter_list_reads_per_milter_settings() -> None:
    entries = parse_milter_list("{ unix:amzguard/amzguard.sock, { default_action = accept }, protocol=6 }, inet:localhost:9")
    assert [e.name for e in entries] == ["unix:amzguard/amzguard.sock", "inet:localhost:9"]
    assert entries[0].settings == {"default_action": "accept", "protocol": "6"}
    assert entries[1].settings == {}
    assert not entries[0].error
    assert "not name=value" in parse_milter_list("{ unix:a, default_action = accept }")[0].error


@pytest.mark.parametrize(
    ("name", "endpoint"),
    [
        ("unix:/var/a.sock", Endpoint("unix", path="/var/a.sock")),
        ("local:a.sock", Endpoint("unix", path="a.sock")),
        ("inet:127.0.0.1:8891", Endpoint("inet", host="127.0.0.1", port="8891")),
        ("inet:[::1]:8891", Endpoint("inet", host="::1", port="8891")),
        ("inet:8891", Endpoint("inet", host="localhost", port="8891")),
        ("inet::8891", Endpoint("inet", host="localhost", port="8891")),
        ("inet:[::1]", None),
        ("tcp:1.2.3.4:5", None),
        ("unix:", None),
        ("amzguard", None),
    ],
)
def test_postfix_endpoint_spellings(name: str, endpoint: Endpoint | None) -> None:
    assert postfix_endpoint(name) == endpoint


def test_libmilter_endpoint_spellings() -> None:
    assert libmilter_endpoint("inet:8891@127.0.0.1") == Endpoint("inet", host="127.0.0.1", port="8891")
    assert libmilter_endpoint("inet6:8891@[::1]") == Endpoint("inet", host="::1", port="8891")
    assert libmilter_endpoint("unix:/run/a.sock") == Endpoint("unix", path="/run/a.sock")


def test_inet_hosts_meet_by_address() -> None:
    milter = Endpoint("inet", host="127.0.0.1", port="8891")
    assert inet_meets(Endpoint("inet", host="localhost", port="8891"), milter)
    assert not inet_meets(Endpoint("inet", host="localhost", port="8892"), milter)
    assert not inet_meets(Endpoint("inet", host="192.0.2.1", port="8891"), milter)
    assert inet_meets(Endpoint("inet", host="192.0.2.1", port="8891"), Endpoint("inet", host="0.0.0.0", port="8891"))


@given(
    st.lists(st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True), min_size=1, max_size=4),
    st.lists(st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True), min_size=1, max_size=3),
    st.booleans(),
)
def test_suggested_spelling_reaches_the_socket(queue_parts: list[str], socket_parts: list[str], chrooted: bool) -> None:
    """What check-postfix tells the admin to write reaches amzguard's socket, chrooted or not, whenever
    the socket is inside the queue directory."""
    queue = "/" + "/".join(queue_parts)
    target = Endpoint("unix", path=queue + "/" + "/".join(socket_parts))
    spelled = postfix_endpoint(postfix_spelling(target, queue))
    assert spelled is not None and spelled.kind == "unix"
    assert socket_file(spelled.path, chrooted, queue) == target.path


@given(st.from_regex(r"/?([a-z0-9_.]{1,6}/){0,3}[a-z0-9_]{1,6}", fullmatch=True))
def test_chrooted_paths_stay_under_the_queue_directory(path: str) -> None:
    assert socket_file(path, True, QUEUE).startswith(QUEUE + "/")


def test_result_addresses_skip_pipes_files_and_substitute() -> None:
    value = 'a@x.test, "|/usr/bin/procmail -a x", /var/mail/box :include:/etc/list $1@marketplace.amazon.de'
    assert list(result_addresses(value)) == ["a@x.test", "x@marketplace.amazon.de"]


def test_stand_ins_cover_every_reason() -> None:
    addresses = stand_in_addresses(WIRING)
    assert [a.rpartition("@")[2] for a in addresses] == [f"{r.value}.amzguard.invalid" for r in Reason]


# ------------------------------------------------------------------ a clean host, then one fault each


def test_debian_style_wiring_is_clean() -> None:
    host = clean_host()
    assert run(settings(), host) == []
    # Every stand-in was looked up with its full address in the regexp table.
    assert {(TRANSPORT, a) for a in stand_in_addresses(WIRING)} <= set(host.queries)


def test_unchrooted_absolute_path_is_clean() -> None:
    pf = settings(smtpd_chroot="n", smtpd_milters=f"unix:{SOCKET}")
    assert run(pf) == []


def test_dash_chroot_follows_the_compatibility_level() -> None:
    absolute = {"smtpd_milters": f"unix:{SOCKET}"}
    assert run(settings(smtpd_chroot="-", compatibility_level="3.6", **absolute)) == []
    found = run(settings(smtpd_chroot="-", compatibility_level="0", **absolute))
    assert "opened inside the chroot" in lines(found)


def test_empty_milter_list() -> None:
    found = run(settings(non_smtpd_milters=""))
    assert [f.parameter for f in found] == ["non_smtpd_milters"]
    assert found[0].severity is Severity.ERROR
    assert "set non_smtpd_milters = unix:amzguard/amzguard.sock" in found[0].text


def test_wrong_socket() -> None:
    found = run(settings(smtpd_milters="unix:other/milter.sock, inet:127.0.0.1:8891"))
    assert [f.parameter for f in found] == ["smtpd_milters"]
    assert "no milter in it reaches amzguard's socket" in found[0].text
    assert "set smtpd_milters = unix:amzguard/amzguard.sock" in found[0].text


def test_chrooted_absolute_path() -> None:
    found = run(settings(smtpd_milters=f"unix:{SOCKET}"))
    assert len(found) == 1
    assert found[0].parameter == "smtpd_milters"
    assert f"at {QUEUE}{SOCKET}, not at amzguard's socket" in found[0].text
    assert "smtp/inet" in found[0].text


def test_socket_outside_a_chrooted_queue() -> None:
    wiring = replace(WIRING, socket="unix:/run/amzguard/amzguard.sock")
    found = run(settings(smtpd_milters="unix:/run/amzguard/amzguard.sock"), wiring=wiring)
    assert any("outside queue_directory" in f.text and f.parameter == "smtpd_milters" for f in found)


def test_inet_wiring() -> None:
    wiring = replace(WIRING, socket="inet:8891@127.0.0.1")
    assert not [f for f in run(settings(smtpd_milters="inet:localhost:8891", non_smtpd_milters="inet:127.0.0.1:8891"),
                                wiring=wiring) if "milters" in f.parameter]  # fmt: skip
    found = run(settings(smtpd_milters="inet:127.0.0.1:8892", non_smtpd_milters="inet:127.0.0.1:8891"), wiring=wiring)
    assert [f.parameter for f in found if "milters" in f.parameter] == ["smtpd_milters"]
    assert "set smtpd_milters = inet:127.0.0.1:8891" in found[0].text


def test_service_override_of_the_milter_list() -> None:
    found = run(settings(overrides={"smtp": {"smtpd_milters": "unix:/nowhere.sock"}}))
    assert [f.parameter for f in found] == ["smtpd_milters (master.cf smtp/inet -o)"]


def test_unusable_milter_name() -> None:
    found = run(settings(smtpd_milters="amzguard.sock, unix:amzguard/amzguard.sock"))
    assert len(found) == 1 and "Postfix cannot use this milter" in found[0].text


def test_no_milters_override() -> None:
    found = run(settings(receive_override_options="no_address_mappings, no_milters"))
    assert [(f.severity, f.parameter) for f in found] == [(Severity.ERROR, "receive_override_options")]
    found = run(settings(overrides={"smtp": {"receive_override_options": "no_milters"}}))
    assert [(f.severity, f.parameter) for f in found] == [
        (Severity.WARNING, "receive_override_options (master.cf smtp/inet -o)")
    ]
    pf = settings()
    pickup = Service("pickup", "unix", "y", "pickup", {"receive_override_options": "no_header_body_checks,no_milters"})
    found = run(replace(pf, services=(*pf.services, pickup)))
    assert [(f.severity, f.parameter) for f in found] == [
        (Severity.ERROR, "receive_override_options (master.cf pickup/unix -o)")
    ]


@pytest.mark.parametrize(("action", "severity"), [("accept", Severity.ERROR), ("reject", Severity.WARNING),
                                                    ("quarantine", Severity.WARNING), ("bogus", Severity.ERROR)])  # fmt: skip
def test_default_action(action: str, severity: Severity) -> None:
    found = run(settings(milter_default_action=action))
    assert [(f.severity, f.parameter) for f in found] == [(severity, "milter_default_action")]


def test_per_milter_default_action_accept() -> None:
    found = run(settings(non_smtpd_milters="{ unix:amzguard/amzguard.sock, default_action=accept }"))
    assert [(f.severity, f.parameter) for f in found] == [(Severity.ERROR, "non_smtpd_milters")]
    assert "default_action=accept in { unix:amzguard/amzguard.sock, default_action=accept }" in found[0].text
    # A per-milter tempfail wins over a global accept for amzguard's own entry.
    quiet = settings(milter_default_action="accept", smtpd_milters="{ unix:amzguard/amzguard.sock, default_action=tempfail }",
                     non_smtpd_milters="{unix:amzguard/amzguard.sock,default_action=tempfail}")  # fmt: skip
    assert run(quiet) == []


def test_service_override_of_the_default_action() -> None:
    found = run(settings(overrides={"smtp": {"milter_default_action": "accept"}}))
    assert [f.parameter for f in found] == ["milter_default_action (master.cf smtp/inet -o)"]


# ------------------------------------------------------------------ transport_maps


def test_missing_transport_map() -> None:
    found = run(settings(transport_maps=""))
    assert [f.parameter for f in found] == ["transport_maps"]
    assert "empty: the stand-ins under amzguard.invalid" in found[0].text
    host = clean_host()
    host.tables["inline:{ x=y }"] = {"x": "y"}
    found = run(settings(transport_maps="inline:{ x=y }"), host)
    assert len(found) == len(Reason)
    assert "no entry routes the stand-in q7x=marketplace.amazon.de@opted-out.amzguard.invalid" in lines(found)


def test_missing_entry_for_one_reason() -> None:
    host = clean_host()
    host.tables[TRANSPORT] = [(rf"@{r.value}\.amzguard\.invalid$", "error:x") for r in Reason if r is not Reason.OPTED_OUT]
    found = run(settings(), host)
    assert [f.text.split(" ")[5] for f in found] == ["q7x=marketplace.amazon.de@opted-out.amzguard.invalid"]


def test_an_earlier_table_routes_the_stand_ins_elsewhere() -> None:
    host = clean_host()
    host.tables["hash:/etc/postfix/transport"] = {}
    host.tables["regexp:/etc/postfix/catchall"] = [(r".", "smtp:[relay.example]")]
    found = run(settings(transport_maps=f"regexp:/etc/postfix/catchall, {TRANSPORT}"), host)
    assert len(found) == len(Reason) and "routes the stand-in" in found[0].text and "smtp:[relay.example]" in found[0].text


def test_domain_and_parent_entries_of_a_hash_table() -> None:
    """trivial-rewrite's order: full address in every table, then domain and parents in fixed tables only."""
    table = "hash:/etc/postfix/transport"
    host = clean_host()
    host.tables[table] = {".amzguard.invalid": "error:5.7.1 refused"}
    assert run(settings(transport_maps=table), host) == []
    # Without transport_maps in parent_domain_matches_subdomains the key must carry the dot.
    host.tables[table] = {"amzguard.invalid": "error:5.7.1 refused"}
    assert len(run(settings(transport_maps=table), host)) == len(Reason)
    pf = settings(transport_maps=table, parent_domain_matches_subdomains="relay_domains transport_maps")
    assert run(pf, host) == []
    # A pattern table is only asked for the full address: a regexp hit on "*" would never happen.
    host.tables["regexp:/star"] = [(r"^\*$", "error:x")]
    assert len(run(settings(transport_maps="regexp:/star"), host)) == len(Reason)


def test_unreadable_transport_table_is_one_finding() -> None:
    found = run(settings(transport_maps="hash:/etc/postfix/missing"))
    assert len(found) == 1 and "cannot look up the stand-in addresses" in found[0].text


def test_reject_mode_needs_no_transport_map() -> None:
    assert run(settings(transport_maps=""), wiring=replace(WIRING, mixed_recipients=MixedRecipients.REJECT)) == []


def test_proxy_tables_are_looked_up_directly() -> None:
    assert run(settings(transport_maps=f"proxy:{TRANSPORT}")) == []


# ------------------------------------------------------------------ post-milter mappings


def test_virtual_alias_to_a_buyer() -> None:
    host = clean_host()
    host.tables["hash:/etc/postfix/virtual"] = {"orders@shop.test": "shop@shop.test, 7mx3@marketplace.amazon.co.uk"}
    found = run(settings(virtual_alias_maps="hash:/etc/postfix/virtual"), host)
    assert [(f.severity, f.parameter) for f in found] == [(Severity.ERROR, "virtual_alias_maps")]
    assert "7mx3@marketplace.amazon.co.uk (entry orders@shop.test)" in found[0].text


def test_bcc_regexp_to_a_marked_buyer() -> None:
    host = clean_host()
    host.files["/etc/postfix/bcc.regexp"] = "# copies\n/^(.*)@shop\\.test$/i  blacklisted-$1@amazon.fr\n/^x$/ ok@shop.test\n"
    found = run(settings(recipient_bcc_maps="regexp:/etc/postfix/bcc.regexp"), host)
    assert [f.parameter for f in found] == ["recipient_bcc_maps"]
    assert "blacklisted-x@amazon.fr" in found[0].text and "adds a blind copy" in found[0].text


def test_indexed_table_without_db_is_read_from_its_source() -> None:
    host = clean_host()
    host.files["/etc/postfix/canonical"] = ("# map\nsales@shop.test\tq7x@marketplace.amazon.de, x@shop.test\n"
                                            "info@shop.test  info@shop.test,\n  blacklisted-9@amazon.it\n")  # fmt: skip
    found = run(settings(canonical_maps="hash:/etc/postfix/canonical"), host)
    assert [f.parameter for f in found] == ["canonical_maps", "canonical_maps"]
    assert "q7x@marketplace.amazon.de (entry sales@shop.test)" in found[0].text
    assert "blacklisted-9@amazon.it (entry info@shop.test)" in found[1].text


def test_domain_wide_virtual_alias_to_a_relay_domain() -> None:
    host = clean_host()
    host.tables["hash:/etc/postfix/virtual"] = {"@orders.shop.test": "@marketplace.amazon.fr"}
    found = run(settings(virtual_alias_maps="hash:/etc/postfix/virtual"), host)
    assert [f.parameter for f in found] == ["virtual_alias_maps"] and "@marketplace.amazon.fr" in found[0].text


def test_aliases_and_include_files() -> None:
    host = clean_host()
    host.files["/etc/aliases"] = "postmaster: root\nteam: :include:/etc/team\n"
    host.files["/etc/team"] = "anna\nblacklisted-77@amazon.de\n"
    found = run(settings(alias_maps="hash:/etc/aliases"), host)
    assert [f.parameter for f in found] == ["alias_maps"] and "blacklisted-77@amazon.de" in found[0].text


def test_generic_map_to_a_buyer() -> None:
    host = clean_host()
    host.tables["inline:{ orders@shop.local=q7x@marketplace.amazon.se }"] = {"orders@shop.local": "q7x@marketplace.amazon.se"}
    found = run(settings(smtp_generic_maps="inline:{ orders@shop.local=q7x@marketplace.amazon.se }"), host)
    assert [f.parameter for f in found] == ["smtp_generic_maps"] and "rewrites an outgoing address" in found[0].text


def test_always_bcc_to_a_buyer() -> None:
    found = run(settings(always_bcc="q7x@Marketplace.Amazon.DE"))
    assert [f.parameter for f in found] == ["always_bcc"]
    assert run(settings(always_bcc="archive@shop.test")) == []


def test_tables_that_cannot_be_listed_are_warnings() -> None:
    found = run(settings(virtual_alias_maps="ldap:/etc/postfix/ldap-aliases.cf, static:{archive@shop.test}"))
    assert [(f.severity, f.parameter) for f in found] == [(Severity.WARNING, "virtual_alias_maps")]
    assert "ldap" in found[0].text


def test_static_and_union_results_are_checked() -> None:
    host = clean_host()
    host.tables["inline:{ a=b }"] = {"a": "b@shop.test"}
    found = run(settings(sender_bcc_maps="unionmap:{inline:{ a=b }, static:x@marketplace.amazon.com}"), host)
    assert [f.parameter for f in found] == ["sender_bcc_maps"]


# ------------------------------------------------------------------ files, users, pipe


def test_store_directory_not_writable() -> None:
    host = clean_host()
    host.denied.add(("amzguard", "/var/lib/amzguard"))
    found = run(settings(), host)
    # The pipe runs as the milter's user with the same config: one line, not two.
    assert [(f.severity, f.parameter) for f in found] == [(Severity.ERROR, "store.path's directory")]
    assert found[0].text.startswith("the milter's user amzguard cannot write: /var/lib/amzguard; chown it to amzguard")


def test_missing_store_directory_is_a_warning() -> None:
    """As for check-config --user: systemd's StateDirectory= may create it at the first start."""
    host = clean_host()
    host.missing.add("/var/lib/amzguard")
    found = run(settings(), host)
    assert [(f.severity, f.parameter) for f in found] == [(Severity.WARNING, "store.path's directory")]


def test_unreadable_secret_and_config() -> None:
    host = clean_host()
    host.denied = {("amzguard", "/etc/amzguard/amzguard.yml"), ("amzguard", "/etc/amzguard/review-token")}
    found = run(settings(), host)
    assert [f.parameter for f in found] == [CONFIG_NEED, "channels.review.token_file"]
    assert "chmod 0640" in found[1].text


def test_missing_user() -> None:
    host = clean_host()
    host.users = set()
    found = run(settings(), host)
    assert [f.parameter for f in found] == ["user"]
    # A pipe running as another user is checked for that user.
    host.users = {"amzguard", "learner"}
    host.denied.add(("learner", "/var/lib/amzguard"))
    pf = settings()
    other = replace(pf.services[-1], command=PIPE.replace("user=amzguard", "user=learner"))
    found = run(replace(pf, services=(*pf.services[:-1], other)), host)
    assert [f.parameter for f in found] == ["store.path's directory"]
    assert "the pipe user of amzguard-optout/unix learner cannot write" in found[0].text


def test_pipe_config_is_checked_for_its_own_path() -> None:
    host = clean_host()
    host.denied.add(("amzguard", "/etc/amzguard/learn.yml"))
    pf = settings()
    other = replace(pf.services[-1], command=PIPE.replace("/etc/amzguard/amzguard.yml", "/etc/amzguard/learn.yml"))
    found = run(replace(pf, services=(*pf.services[:-1], other)), host)
    assert [f.parameter for f in found] == [CONFIG_NEED] and "/etc/amzguard/learn.yml" in found[0].text


def test_not_root_is_a_warning() -> None:
    host = clean_host()
    host.unswitchable.add("amzguard")
    found = run(settings(), host)
    assert [(f.severity, f.parameter) for f in found] == [(Severity.WARNING, "user")]


def test_missing_pipe_binary() -> None:
    host = clean_host()
    host.executables = set()
    found = run(settings(), host)
    assert [f.parameter for f in found] == ["master.cf amzguard-optout/unix"]
    assert f"argv={AMZGUARD} is no executable file" in found[0].text


def test_no_optout_pipe_is_a_warning() -> None:
    pf = settings()
    pf = replace(pf, services=pf.services[:-1])
    found = run(pf)
    assert [(f.severity, f.parameter) for f in found] == [(Severity.WARNING, "master.cf")]


def test_socket_directory_not_writable() -> None:
    host = clean_host()
    host.denied.add(("amzguard", f"{QUEUE}/amzguard"))
    assert [f.parameter for f in run(settings(), host)] == ["milter.socket's directory"]


def test_postfix_cannot_connect_to_the_socket() -> None:
    host = clean_host()
    host.denied.add(("postfix", SOCKET))
    found = run(settings(), host)
    assert [f.parameter for f in found] == ["milter.socket"]
    assert found[0].text.startswith(f"Postfix's mail_owner postfix cannot connect: {SOCKET}; give the socket the group")
    # Only while the socket exists (amzguard running), and for the mail_owner Postfix is set to.
    host.missing.add(SOCKET)
    assert run(settings(), host) == []
    host.missing.clear()
    host.users.add("mailer")
    assert run(settings(mail_owner="mailer"), host) == []


# ------------------------------------------------------------------ header checks (issue 13)


def test_missing_header_check() -> None:
    found = run(settings(smtp_nested_header_checks=""))
    assert [(f.severity, f.parameter) for f in found] == [(Severity.ERROR, "smtp_nested_header_checks")]
    off = run(settings(smtp_header_checks=""), wiring=replace(WIRING, review_enabled=False))
    assert [(f.severity, f.parameter) for f in off] == [(Severity.WARNING, "smtp_header_checks")]


def test_header_check_that_does_not_ignore() -> None:
    host = clean_host()
    host.tables["regexp:/etc/postfix/header_checks"] = [(r"^X-", "WARN x header")]
    found = run(settings(smtp_header_checks=f"regexp:/etc/postfix/header_checks, {HEADERS}"), host)
    assert [f.parameter for f in found] == ["smtp_header_checks"] and "'WARN x header'" in found[0].text


def test_header_check_probes_the_configured_header() -> None:
    host = clean_host()
    found = run(settings(), host, wiring=replace(WIRING, tag_header="X-Shop-Tag"))
    assert {f.parameter for f in found} == {"smtp_header_checks", "smtp_nested_header_checks"}
    assert (HEADERS, "X-Shop-Tag: review x") in host.queries


def test_smtp_service_override_of_header_checks() -> None:
    found = run(settings(overrides={"smtp_client": {"smtp_header_checks": ""}}))
    assert [f.parameter for f in found] == ["smtp_header_checks (master.cf smtp/unix -o)"]


def test_every_finding_is_one_prefixed_line() -> None:
    host = clean_host()
    host.users = set()
    found = run(settings(smtpd_milters="", transport_maps="", smtp_header_checks="", milter_default_action="accept"), host)
    assert found
    for finding in found:
        line = finding.line()
        assert "\n" not in line
        assert re.match(r"^amzguard: (warning|error): \S", line)


# ------------------------------------------------------------------ bad input: findings, never a crash

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@given(_TEXT, _TEXT, st.sampled_from(["tempfail", "accept", "", "{"]))
def test_any_milter_settings_give_findings_not_crashes(smtpd: str, non_smtpd: str, action: str) -> None:
    for finding in run(settings(smtpd_milters=smtpd, non_smtpd_milters=non_smtpd, milter_default_action=action)):
        assert "\n" not in finding.line() and finding.line().isprintable()


@given(_TEXT)
def test_any_table_file_gives_findings_not_crashes(text: str) -> None:
    host = clean_host()
    host.files["/etc/postfix/virtual.regexp"] = text
    host.files["/etc/postfix/virtual"] = text
    host.files["/etc/aliases"] = text
    pf = settings(virtual_alias_maps="regexp:/etc/postfix/virtual.regexp, hash:/etc/postfix/virtual",
                  alias_maps="hash:/etc/aliases")  # fmt: skip
    for finding in run(pf, host):
        assert finding.line().isprintable()


def test_empty_service_override_is_a_warning() -> None:
    found = run(settings(overrides={"smtp": {"smtpd_milters": ""}}))
    assert [(f.severity, f.parameter) for f in found] == [(Severity.WARNING, "smtpd_milters (master.cf smtp/inet -o)")]
    assert "content filter" in found[0].text


DEFAULT_MAIL_MACROS = "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}"
"""Postfix's default milter_mail_macros (DEF_MILT_MAIL_MACROS in src/milter/milter.h)."""


def test_sasl_login_entries_need_auth_authen_in_the_mail_macros() -> None:
    sasl = replace(WIRING, sasl_logins=True)
    assert run(settings(milter_mail_macros=DEFAULT_MAIL_MACROS), wiring=sasl) == []
    found = run(settings(milter_mail_macros="i {mail_addr}"), wiring=sasl)
    assert [(f.severity, f.parameter) for f in found] == [(Severity.ERROR, "milter_mail_macros")]
    assert "lacks {auth_authen}" in found[0].text
    # A submission service that overrides the list is checked on its own.
    overridden = settings(milter_mail_macros=DEFAULT_MAIL_MACROS, overrides={"smtp": {"milter_mail_macros": "i"}})
    assert [f.parameter for f in run(overridden, wiring=sasl)] == ["milter_mail_macros (master.cf smtp/inet -o)"]
    # Without sasl_login entries the macro list is none of amzguard's business.
    assert run(settings(milter_mail_macros="i {mail_addr}")) == []
