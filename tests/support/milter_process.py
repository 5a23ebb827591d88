"""Start and stop a real ``amzguard run`` process for tests, by PID only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .fake_mta import wait_for_socket

REVIEW_TOKEN = "t3st-review-token-7Qx9Lm2"


def write_config(path: Path, socket: str, **sections: object) -> Path:
    """A test config: review channel on with a known token, the store next to the config, full addresses
    in the log (the tests read them) and metrics on a free port (tests run side by side), unless overridden."""
    data: dict[str, object] = {
        "milter": {"socket": socket, "timeout": 30},
        "channels": {"review": {"enabled": True, "token": REVIEW_TOKEN}},
        "store": {"path": str(path.with_suffix(".sqlite"))},
        "logging": {"log_addresses": "full"},
        "metrics": {"listen": "127.0.0.1:0"},
    }
    data.update(sections)
    path.write_text(yaml.safe_dump(data))
    return path


class MilterProcess:
    """``amzguard run`` in a child process; ``prelude`` is Python run before the CLI (fault injection)."""

    def __init__(
        self,
        config: Path,
        socket: str,
        log: Path,
        prelude: str = "",
        group: str | None = None,
        user: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.group = group
        self.user = user
        self.env = env or {}
        self.socket = socket
        self.log = log
        self.prelude = prelude
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line started (a subclass may run another milter, e.g. bench/'s do-nothing one)."""
        code = f"{self.prelude}\nimport sys\nfrom amzguard.cli import main\nsys.exit(main(sys.argv[1:]))"
        return [sys.executable, "-c", code, "run", "-c", str(self.config)]

    def start(self, timeout: float = 15.0) -> MilterProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                group=self.group,  # e.g. "postfix", so the 0660 socket is Postfix's to connect to
                user=self.user,
            )
        try:
            wait_for_socket(self.socket, timeout)
        except OSError:
            self.stop()
            raise RuntimeError(f"milter did not start:\n{self.log_text()}") from None
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal our own child and wait for it (libmilter keeps its listener ~1 s after SIGTERM)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in milter log:\n{self.log_text()}")

    def metrics_url(self, timeout: float = 10.0) -> str:
        """The /metrics URL the process logged at start-up (tests configure port 0: any free port)."""
        text = self.wait_log("metrics on http://", timeout)
        match = re.search(r"metrics on (http://\S+/metrics)", text)
        assert match, text
        return match.group(1)

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of the metrics endpoint, fetched over real HTTP."""
        from prometheus_client.parser import text_string_to_metric_families
        import urllib.request

        with urllib.request.urlopen(self.metrics_url(), timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.scrape()[(name, frozenset(labels.items()))]

    def reload(self) -> None:
        """SIGUSR1 to our own child: reload its config file."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)

    def __enter__(self) -> MilterProcess:
        # ``with start(...) as proc`` hands in a running process: starting it again would orphan it.
        return self if self.alive() else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
