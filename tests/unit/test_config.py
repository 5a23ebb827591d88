"""Config validation: every bad value is an error naming file, key path and expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from amzguard.config import ConfigError, load_config, parse_config
from amzguard.policy import MixedRecipients, Mode

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "etc" / "amzguard.yml"


def test_shipped_config_is_valid_and_safe() -> None:
    config = load_config(SHIPPED)
    assert config.milter.socket == "unix:/var/spool/postfix/amzguard/amzguard.sock"
    assert config.milter.socket_mode == 0o660
    assert config.policy.mode is Mode.ENFORCE
    assert config.policy.review.enabled is False
    assert config.policy.mixed_recipients is MixedRecipients.BOUNCE
    assert "marketplace.amazon.co.jp" in config.policy.buyers.relay_domains


def test_empty_file_gives_defaults() -> None:
    config = parse_config(None)
    assert config.milter.on_error == "tempfail"
    assert config.policy.buyers.marked_prefixes == ("blacklisted-",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "top level: expected a mapping"),
        ({"milterr": {}}, "milterr: unknown key"),
        ({"milter": {"sockt": "unix:/x"}}, "milter.sockt: unknown key"),
        ({"milter": "unix:/x"}, "milter: expected a mapping"),
        ({"milter": {"socket": "/run/x.sock"}}, "milter.socket: expected a libmilter socket spec"),
        ({"milter": {"socket": "inet:127.0.0.1:8891"}}, "milter.socket: expected a libmilter socket spec"),
        ({"milter": {"timeout": "10"}}, "milter.timeout: expected an integer"),
        ({"milter": {"timeout": True}}, "milter.timeout: expected an integer"),
        ({"milter": {"timeout": 0}}, "milter.timeout: expected an integer"),
        ({"milter": {"on_error": "reject"}}, "milter.on_error: expected 'tempfail' or 'accept'"),
        ({"milter": {"socket_mode": 432}}, "milter.socket_mode: expected a quoted octal mode"),
        ({"milter": {"socket_mode": "0666"}}, "milter.socket_mode: expected an octal mode without world write"),
        ({"milter": {"socket_mode": "rw"}}, "milter.socket_mode: expected a quoted octal mode"),
        ({"buyers": {"relay_domains": []}}, "buyers.relay_domains: expected a non-empty list"),
        ({"buyers": {"relay_domains": ["marketplace amazon"]}}, "buyers.relay_domains"),
        ({"buyers": {"relay_domains": "marketplace.amazon.de"}}, "buyers.relay_domains"),
        ({"buyers": {"marked_prefixes": ["blö-"]}}, "buyers.marked_prefixes: expected a list of ASCII"),
        ({"buyers": {"marked_prefixes": [""]}}, "buyers.marked_prefixes"),
        ({"refusal": {"reply_text": "100% forbidden"}}, "refusal.reply_text: expected one line"),
        ({"refusal": {"reply_text": "two\nlines"}}, "refusal.reply_text"),
        ({"refusal": {"reply_text": "x" * 401}}, "refusal.reply_text"),
        ({"refusal": {"mixed_recipients": "drop"}}, "refusal.mixed_recipients: expected 'bounce' or 'reject'"),
        ({"refusal": {"bounce_domain": "not a domain"}}, "refusal.bounce_domain"),
        ({"channels": {"review": {"enabled": "yes"}}}, "channels.review.enabled: expected true or false"),
        ({"channels": {"review": {"enabled": True}}}, "channels.review.token: expected a secret"),
        ({"channels": {"review": {"token": "short"}}}, "channels.review.token: expected at least 16"),
        ({"channels": {"review": {"token": "has spaces in the token"}}}, "channels.review.token"),
        ({"channels": {"review": {"header": "X-Bad:Name"}}}, "channels.review.header: expected a header"),
        ({"channels": {"review": {"allowed_senders": ["nobody"]}}}, "channels.review.allowed_senders"),
        ({"channels": {"forward": {}}}, "channels.forward: unknown key"),
        ({"mode": "dry-run"}, "mode: expected 'enforce' or 'monitor'"),
        ({"logging": {"level": "verbose"}}, "logging.level: expected one of"),
    ],
)
def test_bad_values_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="amzguard.yml")
    assert str(caught.value).startswith("amzguard.yml: ")
    assert message in str(caught.value)


def test_token_and_token_file_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="either token or token_file"):
        parse_config({"channels": {"review": {"token": "a" * 20, "token_file": str(tmp_path / "t")}}})


def test_token_file_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "review-token").write_text("abcdefghijklmnopqrstuvwx\n")
    (tmp_path / "review-token").chmod(0o600)
    conf = tmp_path / "amzguard.yml"
    conf.write_text("channels:\n  review:\n    enabled: true\n    token_file: review-token\n")
    assert load_config(conf).policy.review.token == b"abcdefghijklmnopqrstuvwx"


def test_missing_token_file_is_an_error_only_when_enabled(tmp_path: Path) -> None:
    conf = tmp_path / "amzguard.yml"
    conf.write_text(f"channels:\n  review:\n    enabled: false\n    token_file: {tmp_path}/nope\n")
    load_config(conf)
    conf.write_text(f"channels:\n  review:\n    enabled: true\n    token_file: {tmp_path}/nope\n")
    with pytest.raises(ConfigError, match=r"channels.review.token_file: expected a readable file"):
        load_config(conf)


def test_world_readable_token_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = tmp_path / "review-token"
    token.write_text("abcdefghijklmnopqrstuvwx")
    token.chmod(0o644)
    parse_config({"channels": {"review": {"enabled": True, "token_file": str(token)}}})
    assert "readable by every user" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("milter: [unclosed\n", "line 2 column 1"),
        ("\tmilter: x\n", "invalid YAML"),
    ],
)
def test_yaml_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "bad.yml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    assert str(conf) in str(caught.value) and message in str(caught.value)


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yml")
    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    conf = tmp_path / "evil.yml"
    conf.write_text("mode: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(conf)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amzguard", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_check_config_cli_ok() -> None:
    result = run_cli("check-config", "-c", str(SHIPPED))
    assert result.returncode == 0
    assert result.stdout.strip() == f"configuration OK: {SHIPPED}"


def test_check_config_cli_error(tmp_path: Path) -> None:
    conf = tmp_path / "amzguard.yml"
    conf.write_text("milter:\n  timeout: soon\n")
    result = run_cli("check-config", "-c", str(conf))
    assert result.returncode == 2
    assert f"{conf}: milter.timeout: expected an integer" in result.stderr


def test_run_refuses_broken_config_before_listening(tmp_path: Path) -> None:
    conf = tmp_path / "amzguard.yml"
    conf.write_text("mode: chaos\n")
    result = run_cli("run", "-c", str(conf), "--socket", f"unix:{tmp_path}/s.sock")
    assert result.returncode == 2 and "mode: expected" in result.stderr
    assert not (tmp_path / "s.sock").exists()


def test_inline_secret_in_world_readable_config_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf = tmp_path / "amzguard.yml"
    conf.write_text("channels:\n  review:\n    enabled: true\n    token: abcdefghijklmnopqrstuvwx\n")
    conf.chmod(0o640)
    load_config(conf)
    assert "readable by every user" not in caplog.text
    conf.chmod(0o644)
    load_config(conf)
    assert f"{conf.resolve()}: channels.review.token (inline secret in the config file) is readable by every user" in (
        caplog.text
    )


# -- issue 3: metrics endpoint and address privacy ----------------------------------------------------


def test_metrics_and_privacy_defaults() -> None:
    config = parse_config(None)
    assert (config.metrics.enabled, config.metrics.host, config.metrics.port) == (True, "127.0.0.1", 9925)
    assert config.log_addresses.style.value == "masked"
    assert config.log_addresses.marked_prefixes == ("blacklisted-",)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("127.0.0.1:9925", "127.0.0.1", 9925), ("[::1]:9000", "::1", 9000), ("localhost:0", "localhost", 0)],
)
def test_metrics_listen(listen: str, host: str, port: int) -> None:
    settings = parse_config({"metrics": {"listen": listen}}).metrics
    assert (settings.host, settings.port) == (host, port)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"metrics": {"listen": "9925"}}, "metrics.listen: expected HOST:PORT"),
        ({"metrics": {"listen": "127.0.0.1:70000"}}, "metrics.listen: expected HOST:PORT"),
        ({"metrics": {"enabled": "no"}}, "metrics.enabled: expected true or false"),
        ({"metrics": {"port": 1}}, "metrics.port: unknown key"),
        ({"logging": {"log_addresses": "anonymous"}}, "logging.log_addresses: expected one of full, masked, hashed"),
        ({"logging": {"log_addresses": "hashed"}}, "logging.hash_key: expected a key"),
        ({"logging": {"log_addresses": "hashed", "hash_key": "short"}}, "logging.hash_key: expected at least 16"),
    ],
)
def test_bad_metrics_and_logging_values(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data, source="amzguard.yml")


def test_hash_key_file(tmp_path: Path) -> None:
    (tmp_path / "log-key").write_text("0123456789abcdef0123\n")
    (tmp_path / "log-key").chmod(0o640)
    path = tmp_path / "amzguard.yml"
    path.write_text("logging: {log_addresses: hashed, hash_key_file: log-key}\n")
    config = load_config(path)
    assert config.log_addresses.key == b"0123456789abcdef0123"
    path.write_text("logging: {log_addresses: hashed, hash_key_file: missing-key}\n")
    with pytest.raises(ConfigError, match="logging.hash_key_file: expected a readable file"):
        load_config(path)


def test_every_amzguard_config_under_etc_passes_check_config() -> None:
    configs = [path for path in (REPO / "etc").rglob("*.yml") if path.parent.name not in ("prometheus",)]
    assert SHIPPED in configs
    for path in configs:
        result = subprocess.run([sys.executable, "-m", "amzguard", "check-config", "-c", str(path)],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, (path, result.stderr)
        assert result.stdout.strip() == f"configuration OK: {path}"
