"""The key table is the one source of truth: the parser, etc/amzguard.yml, amzguard.yml(5) and
docs/configuration.md all say what it says."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from amzguard.config import ConfigError, parse_config, parsed_key_paths
from amzguard.config_keys import BY_PATH, KEYS, man_page, markdown

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "etc" / "amzguard.yml"
MAN5 = REPO / "man" / "amzguard.yml.5"
MAN8 = REPO / "man" / "amzguard.8"
DOCS = REPO / "docs" / "configuration.md"
COMMENTED_KEY = re.compile(r"^(\s*)#([a-z_]+):(.*)$")


def nested(path: str, value: object) -> dict:
    data: object = value
    for part in reversed(path.split(".")):
        data = {part: data}
    assert isinstance(data, dict)
    return data


def yaml_form(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def test_the_parser_reads_exactly_the_tables_keys() -> None:
    assert parsed_key_paths() == set(BY_PATH)


def test_paths_are_unique_and_sections_hold_no_values() -> None:
    assert len(BY_PATH) == len(KEYS)
    for key in KEYS:
        assert key.section not in BY_PATH, f"{key.path}: its section {key.section} is also a key"


@pytest.mark.parametrize("key", [k for k in KEYS if k.default is not None], ids=lambda k: k.path)
def test_each_default_passes_its_own_check_and_means_the_same_as_leaving_it_out(key) -> None:
    assert key.check(yaml_form(key.default)), f"{key.path}: the default fails the key's check"
    assert parse_config(nested(key.path, yaml_form(key.default))) == parse_config({})


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.path)
def test_each_key_refuses_a_wrong_type_naming_its_path(key) -> None:
    wrong = {"boolean": "yes"}.get(key.type, {"a": "mapping"})
    with pytest.raises(ConfigError, match=f"^amzguard.yml: {re.escape(key.path)}: expected "):
        parse_config(nested(key.path, wrong), source="amzguard.yml")


@pytest.mark.parametrize("section", ["milter", "channels.review", "logging", "optout.learn"])
def test_unknown_keys_are_still_refused(section: str) -> None:
    with pytest.raises(ConfigError, match=f"{re.escape(section)}.tpyo: unknown key"):
        parse_config(nested(f"{section}.tpyo", 1))


def shipped_with_commented_keys() -> dict:
    """etc/amzguard.yml with every ``#key:`` line (a key shown but left unset) uncommented."""
    text = "\n".join(COMMENTED_KEY.sub(r"\1\2:\3", line) for line in SHIPPED.read_text().splitlines())
    return yaml.safe_load(text)


def test_shipped_config_shows_every_key_with_its_default() -> None:
    data = shipped_with_commented_keys()
    for key in KEYS:
        node: object = data
        for part in key.path.split("."):
            assert isinstance(node, dict) and part in node, f"{key.path} is missing from etc/amzguard.yml"
            node = node[part]
        assert node == yaml_form(key.default), f"etc/amzguard.yml: {key.path}: {node!r} is not the default"


def test_shipped_config_means_the_defaults() -> None:
    assert parse_config(yaml.safe_load(SHIPPED.read_text())) == parse_config({})


def test_committed_pages_are_the_generated_ones() -> None:
    # `make docs` regenerates them after a change to the table.
    assert MAN5.read_text() == man_page(), "man/amzguard.yml.5 is stale: run make docs"
    assert DOCS.read_text() == markdown(), "docs/configuration.md is stale: run make docs"


@pytest.mark.parametrize("page", [MAN5, DOCS], ids=["man5", "docs"])
def test_every_key_is_in_the_pages(page: Path) -> None:
    text = page.read_text().replace("\\-", "-")
    for key in KEYS:
        assert key.path in text, f"{page.name} does not describe {key.path}"


def test_generator_command() -> None:
    done = subprocess.run([sys.executable, "-m", "amzguard.config_keys", "--man"], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0 and done.stdout == man_page()
    bad = subprocess.run([sys.executable, "-m", "amzguard.config_keys"], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert bad.returncode == 2 and "usage:" in bad.stderr


@pytest.mark.parametrize("page", [MAN5, MAN8], ids=["amzguard.yml.5", "amzguard.8"])
def test_man_renders_without_warnings(page: Path) -> None:
    man = shutil.which("man")
    assert man, "man-db is needed (Makefile TEST_PACKAGES)"
    done = subprocess.run([man, "--warnings", "-l", str(page)], capture_output=True, text=True, timeout=60,
                          env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert "amzguard" in done.stdout


def test_amzguard_8_names_every_command_and_option() -> None:
    import argparse

    from amzguard.cli import _parser

    page = MAN8.read_text().replace("\\-", "-")
    parser = _parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        assert f"\n.B {name}" in page or f"{name} " in page, f"amzguard(8) does not describe {name}"
        for action in sub._actions:
            for option in action.option_strings:
                assert option in page, f"amzguard(8) does not name {name} {option}"
        for nested_action in (a for a in sub._actions if isinstance(a, argparse._SubParsersAction)):
            for nested_name, nested_sub in nested_action.choices.items():
                assert f"{name} {nested_name}" in page, f"amzguard(8) does not describe {name} {nested_name}"
                for action in nested_sub._actions:
                    for option in action.option_strings:
                        assert option in page, f"amzguard(8) does not name {name} {nested_name} {option}"
