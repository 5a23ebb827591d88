"""Postfix's syntax as check-postfix reads it: lists, milter entries and sockets, tables, pipe commands.

Each function follows the Postfix source it names, so that check-postfix reads a setting as Postfix does.
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

SEPARATORS = ", \t\r\n"
"""Postfix's list separators (CHARS_COMMA_SP); ``{…}`` groups one element (mystrtokq with CHARS_BRACE)."""

# Table types that are given only the full lookup key (dict flag PATTERN): trivial-rewrite skips them for
# the domain, parent-domain and "*" lookups of transport_maps.
PATTERN_TABLES = frozenset({"regexp", "pcre"})
# Tables whose entries `postmap -s` lists (their source file is the fallback where the .db is unreadable).
LISTABLE_TABLES = frozenset({"hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash", "inline"})
INDEXED_TABLES = frozenset({"hash", "btree", "lmdb", "cdb", "dbm", "sdbm"})


def compat_major(level: str) -> int:
    """The major number of compatibility_level ("3.6" -> 3); master.cf's chroot default depends on it."""
    match = re.match(r"\s*(\d+)", level)
    return int(match[1]) if match else 0


def split_list(text: str) -> list[str]:
    """Split a Postfix list value; a ``{ … }`` group (nested braces too) stays one element."""
    items: list[str] = []
    index, end = 0, len(text)
    while index < end:
        if text[index] in SEPARATORS:
            index += 1
            continue
        start, depth = index, 0
        while index < end:
            char = text[index]
            if char == "{":
                depth += 1
            elif char == "}":
                depth = max(0, depth - 1)
            elif depth == 0 and char in SEPARATORS:
                break
            index += 1
        items.append(text[start:index])
    return items


def unbrace(text: str) -> str | None:
    """The inside of a ``{ … }`` element, None if it is none."""
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        return text[1:-1].strip()
    return None


@dataclass(frozen=True, slots=True)
class MilterEntry:
    """One element of smtpd_milters / non_smtpd_milters."""

    text: str
    """As written (``{ … }`` groups included), for messages."""
    name: str
    """The ``transport:endpoint`` part."""
    settings: Mapping[str, str]
    """Per-milter overrides inside ``{ … }`` (default_action, protocol, *_timeout)."""
    error: str = ""
    """Why Postfix cannot parse the overrides (it stops with a fatal error on them)."""


def parse_milter_list(value: str) -> list[MilterEntry]:
    entries = []
    for item in split_list(value):
        inner = unbrace(item)
        if inner is None:
            entries.append(MilterEntry(item, item, {}))
            continue
        parts = split_list(inner)
        settings: dict[str, str] = {}
        error = "" if parts else "empty milter definition"
        for part in parts[1:]:
            # attr_override.c: name=value, or { name = value } where white space is allowed.
            pair = unbrace(part) or part
            name, equals, val = pair.partition("=")
            if not equals or not name.strip():
                error = error or f"{part!r} is not name=value (write {{ name = value }} for spaces)"
            settings[name.strip()] = val.strip()
        entries.append(MilterEntry(item, parts[0] if parts else "", settings, error))
    return entries


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A milter socket: ``unix`` with a path, or ``inet`` with host and port."""

    kind: str
    path: str = ""
    host: str = ""
    port: str = ""


def postfix_endpoint(name: str) -> Endpoint | None:
    """Postfix's spelling (milter8.c): ``unix:PATH``, ``local:PATH``, ``inet:HOST:PORT``, ``inet:[V6]:PORT``,
    ``inet:PORT`` (host localhost, util/inet_connect.c). None when Postfix would refuse it."""
    transport, sep, endpoint = name.partition(":")
    if not sep or not endpoint or not transport:
        return None
    if transport in ("unix", "local"):
        return Endpoint("unix", path=endpoint)
    if transport != "inet":
        return None
    if endpoint.startswith("["):
        host, bracket, rest = endpoint[1:].partition("]")
        if not bracket or not rest.startswith(":") or not rest[1:]:
            return None
        return Endpoint("inet", host=host, port=rest[1:])
    host, sep, port = endpoint.rpartition(":")
    if not sep:
        host, port = "", endpoint
    return Endpoint("inet", host=host or "localhost", port=port) if port else None


def libmilter_endpoint(spec: str) -> Endpoint | None:
    """amzguard's (libmilter's) spelling: ``unix:/path``, ``local:/path``, ``inet:PORT@HOST``, ``inet6:…``."""
    transport, sep, endpoint = spec.partition(":")
    if not sep or not endpoint:
        return None
    if transport in ("unix", "local"):
        return Endpoint("unix", path=endpoint)
    if transport in ("inet", "inet6"):
        port, _, host = endpoint.partition("@")
        return Endpoint("inet", host=host.strip("[]") or "*", port=port)
    return None


def postfix_spelling(target: Endpoint, queue_directory: str) -> str:
    """How main.cf should name amzguard's socket: relative to the queue directory where it lies inside it
    (that works chrooted and not), else absolute; inet as HOST:PORT."""
    if target.kind == "inet":
        host = "127.0.0.1" if target.host in _ANY_HOST else target.host
        return f"inet:[{host}]:{target.port}" if ":" in host else f"inet:{host}:{target.port}"
    inside = relative_to(target.path, queue_directory)
    return f"unix:{inside}" if inside else f"unix:{target.path}"


def relative_to(path: str, directory: str) -> str | None:
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    if path.startswith(directory.rstrip("/") + "/"):
        return path[len(directory.rstrip("/")) + 1 :]
    return None


def socket_file(path: str, chrooted: bool, queue_directory: str) -> str:
    """Where on the host a Postfix daemon connects for ``unix:PATH``: daemons work in the queue directory,
    and a chrooted one has it as its root, so every path is then under it."""
    if chrooted or not path.startswith("/"):
        return posixpath.normpath(posixpath.join(queue_directory, path.lstrip("/")))
    return posixpath.normpath(path)


_ANY_HOST = frozenset({"*", "0.0.0.0", "::", "inaddr_any"})


def _host_addresses(host: str) -> set[str]:
    host = host.strip("[]").lower()
    if host == "localhost":
        return {"127.0.0.1", "::1"}
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        return {host.rstrip(".")}


def inet_meets(postfix: Endpoint, milter: Endpoint) -> bool:
    if postfix.port != milter.port:
        return False
    if milter.host.lower() in _ANY_HOST:
        return True
    return bool(_host_addresses(postfix.host) & _host_addresses(milter.host))


def split_table(table: str) -> tuple[str, str]:
    kind, sep, name = table.partition(":")
    return (kind, name) if sep else ("", table)


def inner_tables(name: str) -> list[str]:
    inner = unbrace(name)
    return split_list(inner) if inner is not None else []


def pattern_results(text: str) -> Iterator[tuple[str, str]]:
    """(pattern, result) of a regexp/pcre table; if/endif lines and comments skipped, continuations joined."""
    lines: list[str] = []
    for raw in text.splitlines():
        if raw[:1].isspace() and lines and raw.strip() and not raw.lstrip().startswith("#"):
            lines[-1] += " " + raw.strip()
        elif raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw.strip())
    for line in lines:
        if line.lower().startswith(("if ", "if!", "endif")) or line.lower() == "endif":
            continue
        delimiter = line[0]
        index, escaped = 1, False
        while index < len(line):
            if escaped:
                escaped = False
            elif line[index] == "\\":
                escaped = True
            elif line[index] == delimiter:
                break
            index += 1
        rest = line[index + 1 :]
        flags = re.match(r"[A-Za-z]*", rest)
        result = rest[flags.end() if flags else 0 :].strip()
        if result:
            yield line[: index + 1], result


def source_entries(text: str, aliases: bool) -> Iterator[tuple[str, str]]:
    """(key, value) of a postmap/postalias source file (continuation lines start with white space)."""
    lines: list[str] = []
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw[:1].isspace() and lines:
            lines[-1] += " " + raw.strip()
        else:
            lines.append(raw.strip())
    for line in lines:
        if aliases and ":" in line:
            key, _, value = line.partition(":")
        else:
            key, _, value = line.replace("\t", " ").partition(" ")
        yield key.strip(), value.strip()


_SUBSTITUTION = re.compile(r"\$(?:\d|\{\d+\})")


def result_addresses(value: str) -> Iterator[str]:
    """The addresses in a mapping result: comma/space separated, quotes kept together, pipes and files
    skipped; regexp substitutions ($1) read as a placeholder local text."""
    for item in split_quoted(value):
        item = item.strip()
        if not item or item.startswith(("|", "/", '"|', '"/', ":include:")):
            continue
        yield _SUBSTITUTION.sub("x", item)


def split_quoted(value: str) -> list[str]:
    items, current, quoted = [], [], False
    for char in value:
        if char == '"':
            quoted = not quoted
        if not quoted and char in SEPARATORS:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def includes(value: str) -> list[str]:
    return [item.strip()[len(":include:") :] for item in split_quoted(value) if item.strip().startswith(":include:")]


def pipe_argv(command: str) -> tuple[str, list[str]]:
    """(user=, argv) of a pipe(8) command field."""
    words = command.split()
    user = next((w[len("user=") :] for w in words if w.startswith("user=")), "")
    for index, word in enumerate(words):
        if word.startswith("argv="):
            return user, [word[len("argv=") :], *words[index + 1 :]]
    return user, []


def runs_optout_learn(argv: list[str]) -> bool:
    return any(a == "optout" and b == "learn" for a, b in zip(argv, argv[1:], strict=False))


def config_arg(argv: list[str]) -> str | None:
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("-c", "--config"):
            return value
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
