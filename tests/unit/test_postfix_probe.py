"""check-postfix's probe: the milter's user from the unit, what it must reach from the config."""

from __future__ import annotations

from pathlib import Path

import yaml

from amzguard.config import load_config
from amzguard.postfix_probe import DEFAULT_USER, unit_user, wiring_from_config
from amzguard.user_check import CONFIG_NEED, needs

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


def test_wiring_takes_the_needs_of_check_config_user(tmp_path: Path) -> None:
    """check-postfix asks exactly what `check-config --user` asks (user_check.needs): one list."""
    (tmp_path / "review-token").write_text("a-review-token-of-24-chr\n")
    config = tmp_path / "amzguard.yml"
    config.write_text(yaml.safe_dump({
        "channels": {"review": {"enabled": True, "token_file": "review-token"}},
        "store": {"path": "store/amzguard.sqlite"},
    }))  # fmt: skip
    loaded = load_config(config)
    wiring = wiring_from_config(loaded, "nobody")
    assert wiring.needs == tuple(needs(loaded, config.resolve()))
    assert [n.what for n in wiring.needs][:2] == [CONFIG_NEED, "channels.review.token_file"]
    assert wiring.user == "nobody" and wiring.review_enabled
