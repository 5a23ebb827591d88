"""check-postfix's probe: the milter's user from the unit, the secret files from the config."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import yaml

from amzguard.config import load_config
from amzguard.postfix_probe import DEFAULT_USER, secret_files, unit_user, wiring_from_config

REPO = Path(__file__).resolve().parents[2]


def test_unit_user_reads_the_first_unit_found(tmp_path: Path) -> None:
    admin = tmp_path / "etc" / "amzguard.service"
    vendor = tmp_path / "lib" / "amzguard.service"
    vendor.parent.mkdir()
    vendor.write_text("[Service]\nUser=vendor\n")
    assert unit_user((admin, vendor)) == "vendor"
    admin.parent.mkdir()
    admin.write_text("[Service]\nUser=first\n# later lines win, as in systemd\nUser=mailguard\n")
    assert unit_user((admin, vendor)) == "mailguard"
    assert unit_user((tmp_path / "none.service",)) == DEFAULT_USER


def test_shipped_unit_runs_as_the_default_user() -> None:
    assert unit_user((REPO / "systemd" / "amzguard.service",)) == DEFAULT_USER


def test_secret_files_resolved_like_the_config_reads_them(tmp_path: Path) -> None:
    (tmp_path / "review-token").write_text("a-review-token-of-24-chr\n")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "log-hash-key").write_text("a-log-hash-key-of-24-chr\n")
    config = tmp_path / "amzguard.yml"
    config.write_text(yaml.safe_dump({
        "channels": {"review": {"enabled": True, "token_file": "review-token"}},
        "logging": {"log_addresses": "hashed", "hash_key_file": str(keys / "log-hash-key")},
        "store": {"path": "store/amzguard.sqlite"},
    }))  # fmt: skip
    loaded = load_config(config)
    assert secret_files(loaded) == (
        ("channels.review.token_file", PurePosixPath(tmp_path / "review-token")),
        ("logging.hash_key_file", PurePosixPath(keys / "log-hash-key")),
    )
    wiring = wiring_from_config(loaded, "nobody")
    assert wiring.store_path == PurePosixPath(tmp_path / "store" / "amzguard.sqlite")
    assert wiring.config_path == PurePosixPath(config.resolve())
    assert wiring.user == "nobody"


def test_no_secret_files_while_their_features_are_off() -> None:
    # The shipped config names both files but uses neither (review off, masked addresses).
    assert secret_files(load_config(REPO / "etc" / "amzguard.yml")) == ()
