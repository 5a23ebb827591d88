"""amzguard's cost on a real Postfix, side by side with the alternatives, in one run on one machine.

Pipeline: ``smtp-source`` (the shop) -> a throwaway Postfix per setup -> ``smtp-sink`` (the internet).
Setups: Postfix alone (the pipeline's limit), Postfix with a do-nothing pymilter milter (the framework
floor) and with amzguard, each milter over a unix socket and over ``inet:``, a do-nothing C libmilter
milter negotiated like amzguard (bench/noop_milter.c, built in the run: what any libmilter milter can
reach on this machine), and Postfix with the ``error:`` transport-map recipe an admin would use instead
of a milter.

Every setup runs all the time; the measured runs are interleaved (setup order rotated each round) so
that drift on a shared machine spreads over all setups, and each figure is the median of the rounds.
Only ratios measured in the same run mean anything: absolute rates drift with the machine.

Run as root (Postfix instances): ``make bench`` or ``python -m bench.pipeline --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import platform
import re
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/pipeline.py` as well as `python -m bench.pipeline`
    sys.path.insert(0, str(REPO))

from bench import traffic  # noqa: E402
from bench.noop_milter import negotiated_steps  # noqa: E402
from bench.traffic import Filter  # noqa: E402
from tests.e2e.harness import SMTP_SINK, PostfixInstance, Sink, free_port  # noqa: E402
from tests.support.milter_process import MilterProcess, write_config  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTCONF = "/usr/sbin/postconf"

BENCH_MAIN_CF = {
    # Room for 50 smtpd plus their cleanup processes at once.
    "default_process_limit": "200",
    # Keep smtpd processes between runs: respawning them would be measured as well.
    "max_idle": "600s",
    "max_use": "100000",
}
"""main.cf settings added to the e2e harness's for benchmarking."""


class BenchError(RuntimeError):
    """A run did not complete as it must (lost or unexpected mail, a tool failing): no figure from it."""


# --------------------------------------------------------------------------- Postfix and its sink


class CountingSink(Sink):
    """smtp-sink that keeps nothing and only counts (``-c``): writing files would be measured too."""

    _COUNTER = re.compile(rb"mesg=(\d+)\r")

    def command(self) -> list[str]:
        return [SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{self.port}", "1000"]

    def received(self) -> int:
        """Messages received so far: smtp-sink rewrites its counter line (``... mesg=N\\r``) on stdout."""
        try:
            with open(self._log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 512))
                tail = log.read()
        except FileNotFoundError:
            return 0
        counts = self._COUNTER.findall(tail)
        return int(counts[-1]) if counts else 0


class BenchPostfix(PostfixInstance):
    """The e2e harness's Postfix, with a counting sink and settings for many parallel sessions."""

    def __init__(
        self, workdir: Path, milter: str | None = None, transport_maps: str | None = None,
        main_cf: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(workdir, milter=milter, transport_maps=transport_maps,
                         extra_main_cf={**BENCH_MAIN_CF, **(main_cf or {})})  # fmt: skip
        self.sink = CountingSink(self.workdir / "sink")

    def queue_empty(self) -> bool:
        """No file in any queue: cheaper than ``postqueue -j`` between measured runs."""
        for name in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _root, _dirs, files in os.walk(self.queue_dir / name):
                if files:
                    return False
        return True


class NoopMilterProcess(MilterProcess):
    """bench/noop_milter.py in a child process, started and stopped like amzguard."""

    def command(self) -> list[str]:
        return [sys.executable, str(REPO / "bench" / "noop_milter.py"), self.socket]


C_MILTER_SOURCE = REPO / "bench" / "noop_milter.c"
CC = "gcc"


def build_c_milter(directory: Path) -> Path:
    """Compile bench/noop_milter.c against the system's libmilter (libmilter-dev, as ``make test`` installs)."""
    binary = directory / "noop_milter_c"
    command = [CC, "-O2", "-Wall", "-o", str(binary), str(C_MILTER_SOURCE), "-lmilter", "-pthread"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except OSError as exc:
        raise BenchError(f"cannot build the C reference milter: {exc}") from None
    if done.returncode != 0:
        raise BenchError(f"cannot build the C reference milter ({' '.join(command)}):\n{done.stderr[-2000:]}")
    return binary


class CMilterProcess(MilterProcess):
    """The C reference milter in a child process, started and stopped like amzguard."""

    def __init__(self, binary: Path, socket: str, log: Path) -> None:
        super().__init__(binary.with_suffix(".unused"), socket, log, group="postfix")
        self.binary = binary

    def command(self) -> list[str]:
        return [str(self.binary), self.socket]


# --------------------------------------------------------------------------- setups


@dataclass(frozen=True)
class Setup:
    name: str
    label: str
    filter: Filter
    milter: str | None = None
    """"noop" (pymilter), "noop-c" (C libmilter) or "amzguard"."""
    socket: str | None = None
    """"unix" or "inet"."""
    store: str = "sqlite"
    """amzguard's store: "sqlite" (a file beside the config) or "postgresql" (a throwaway cluster)."""
    content: bool = True
    """amzguard's content rules at their defaults (True) or all off."""
    pythonpath: str | None = None
    """For a baseline amzguard: the directory its ``amzguard`` package is imported from (``--baseline``)."""
    main_cf: tuple[tuple[str, str], ...] = ()
    """main.cf settings of this setup's Postfix on top of the benchmark's."""


SETUPS: tuple[Setup, ...] = (
    Setup("postfix", "Postfix, no milter", Filter.NONE),
    Setup("noop-unix", "no-op pymilter, unix:", Filter.NONE, "noop", "unix"),
    Setup("noop-inet", "no-op pymilter, inet:", Filter.NONE, "noop", "inet"),
    Setup("amzguard-unix", "amzguard, unix:", Filter.AMZGUARD, "amzguard", "unix"),
    Setup("amzguard-inet", "amzguard, inet:", Filter.AMZGUARD, "amzguard", "inet"),
    Setup("noop-c-unix", "no-op C libmilter, unix:", Filter.NONE, "noop-c", "unix"),
    Setup("amzguard-pg", "amzguard, PostgreSQL", Filter.AMZGUARD, "amzguard", "unix", "postgresql"),
    Setup("amzguard-nocontent", "amzguard, no content", Filter.AMZGUARD, "amzguard", "unix", content=False),
    Setup("error-transport", "error: transport map", Filter.ERROR_TRANSPORT),
)
FEW_MACROS = (
    ("milter_connect_macros", "v"), ("milter_helo_macros", ""), ("milter_mail_macros", ""),
    ("milter_rcpt_macros", "i {rcpt_addr}"), ("milter_data_macros", "i"), ("milter_end_of_header_macros", ""),
    ("milter_end_of_data_macros", "i"), ("milter_unknown_command_macros", ""),
)  # fmt: skip
"""Only the macros amzguard reads (``v`` at connect: which MTA it is; the queue id for its log lines;
``{rcpt_addr}`` at RCPT); Postfix still sends a macro packet for every step, only shorter."""
OPTIONAL_SETUPS: tuple[Setup, ...] = (
    Setup("amzguard-unix-macros", "amzguard, few macros", Filter.AMZGUARD, "amzguard", "unix",
          main_cf=FEW_MACROS),  # fmt: skip
)
"""Run only when named in --setups: measurements of one change, not part of the standard table."""
SETUP_NAMES = tuple(setup.name for setup in SETUPS)
BASELINE = Setup("baseline-unix", "amzguard baseline, unix:", Filter.AMZGUARD, "amzguard", "unix")
"""Another amzguard version in the same run (``--baseline DIR``), to measure what a change bought."""


@dataclass
class Target:
    """One running setup: its Postfix, its milter (if any), their directory."""

    setup: Setup
    workdir: Path
    postfix: BenchPostfix
    milter: MilterProcess | None = None

    def stop(self) -> None:
        try:
            self.postfix.stop()
        finally:
            if self.milter is not None:
                self.milter.stop()


def _start_milter(setup: Setup, workdir: Path) -> tuple[MilterProcess, str]:
    """Start the setup's milter; returns it and the socket spec Postfix must use."""
    for _attempt in range(4):
        if setup.socket == "unix":
            libmilter_spec = f"unix:{workdir / 'milter.sock'}"
            postfix_spec = libmilter_spec
        else:
            port = free_port()
            libmilter_spec = f"inet:{port}@127.0.0.1"
            postfix_spec = f"inet:127.0.0.1:{port}"
        log = workdir / "milter.log"
        process: MilterProcess
        if setup.milter == "amzguard":
            sections = traffic.amzguard_sections(setup.content)
            if setup.store == "postgresql":
                sections["store"] = {"url": _database()}
            config = write_config(workdir / "amzguard.yml", libmilter_spec, **sections)
            env = {"PYTHONPATH": setup.pythonpath} if setup.pythonpath else None
            process = MilterProcess(config, libmilter_spec, log, group="postfix", env=env)
        elif setup.milter == "noop-c":
            process = CMilterProcess(build_c_milter(workdir), libmilter_spec, log)
        else:
            process = NoopMilterProcess(workdir / "unused.yml", libmilter_spec, log, group="postfix")
        try:
            return process.start(), postfix_spec
        except RuntimeError:
            if setup.socket == "unix":
                raise
    raise BenchError(f"{setup.name}: milter did not start on a free port")


_CLUSTER: list[PostgresCluster] = []


def _database() -> str:
    """A new database with amzguard's schema on the run's PostgreSQL cluster (started at first use, on the
    same machine, over its unix socket: the loopback case of the issue's target)."""
    from amzguard.store.postgres import PostgresStore

    if not _CLUSTER:
        _CLUSTER.append(PostgresCluster().start())
    url = _CLUSTER[0].socket_url(_CLUSTER[0].new_database("bench"))
    store = PostgresStore(url)
    store.migrate()
    store.shutdown()
    return url


def start_target(setup: Setup, base: Path) -> Target:
    # Like the harness's make_workdir, but under ``base`` (e.g. /dev/shm to take the disk out).
    workdir = Path(tempfile.mkdtemp(prefix=f"amzguard-bench-{setup.name}-", dir=base))
    workdir.chmod(0o755)
    milter: MilterProcess | None = None
    milter_spec: str | None = None
    transport_maps = None
    try:
        if setup.milter:
            milter, milter_spec = _start_milter(setup, workdir)
        if setup.filter is Filter.ERROR_TRANSPORT:
            table = workdir / "buyers-transport.regexp"
            table.write_text(traffic.ERROR_TRANSPORT_REGEXP)
            transport_maps = f"regexp:{table}"
        (workdir / "postfix").mkdir(mode=0o755)
        postfix = BenchPostfix(workdir / "postfix", milter=milter_spec, transport_maps=transport_maps,
                               main_cf=dict(setup.main_cf))  # fmt: skip
        postfix.start()
    except BaseException:
        if milter is not None:
            milter.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # the error carries the milter's or Postfix's log
        raise
    return Target(setup, workdir, postfix, milter)


@contextlib.contextmanager
def running_targets(setups: Sequence[Setup], base: Path, keep: bool) -> Iterator[list[Target]]:
    targets: list[Target] = []
    try:
        for setup in setups:
            targets.append(start_target(setup, base))
        yield targets
    finally:
        for target in targets:
            with contextlib.suppress(Exception):
                target.stop()
            if not keep:
                shutil.rmtree(target.workdir, ignore_errors=True)
        while _CLUSTER:
            _CLUSTER.pop().destroy()


# --------------------------------------------------------------------------- review requests one by one


def review_latency(target: Target, count: int, first_order: int) -> list[float]:
    """Milliseconds per review request, end to end as the shop's mailer sees it: MAIL, RCPT, DATA and
    Postfix's 250 after amzguard's end-of-message (look-up, claim of the order, record), one request at a
    time over one SMTP session, each for an order of its own (so each claims a new row)."""
    review = next(stream for stream in traffic.MIX if stream.kind is traffic.Kind.REVIEW)
    template = traffic.message_text(review).replace("\n", "\r\n")
    samples = []
    with smtplib.SMTP("127.0.0.1", target.postfix.smtp_port, timeout=60) as client:
        client.ehlo("bench.test")
        for n in range(first_order, first_order + count):
            message = template.replace("302-0000000-0000000", f"303-{n // 10_000_000:07d}-{n % 10_000_000:07d}")
            start = time.perf_counter_ns()
            refused = client.sendmail(review.sender, [review.recipient], message.encode())
            samples.append((time.perf_counter_ns() - start) / 1e6)
            if refused:
                raise BenchError(f"{target.setup.name}: review request refused: {refused}")
    return samples


# --------------------------------------------------------------------------- one measured run


@dataclass
class Sample:
    accepted_per_s: float
    """Messages the client got Postfix's final answer for (queued or refused), per second of sending."""
    delivered_per_s: float
    """The same messages per second until the last one that may leave reached the sink."""
    send_seconds: float
    done_seconds: float
    messages: int
    delivered: int
    milter_cpu_ms: float | None = None
    """CPU time (user + system) the milter process used per message; None without a milter. Less
    sensitive to other load on the machine than the rates, and the cost a milter adds to the host."""


def _source_command(stream: traffic.Stream, sessions: int, messages: int, message_file: Path, port: int) -> list[str]:
    command = [
        SMTP_SOURCE,
        "-A",  # a refused recipient or message is an answer, not a reason to stop
        "-s", str(traffic.split(sessions, stream)),
        "-m", str(traffic.split(messages, stream)),
        "-F", str(message_file),
        "-f", stream.sender,
        "-t", stream.recipient,
    ]  # fmt: skip
    if stream.numbered:
        command.append("-N")
    command.append(f"127.0.0.1:{port}")
    return command


def run_once(target: Target, sessions: int, messages: int, files: dict[str, Path], timeout: float) -> Sample:
    """Send the mix once through ``target`` and wait until everything that may leave has reached the sink."""
    postfix = target.postfix
    sink = postfix.sink
    assert isinstance(sink, CountingSink)
    before = sink.received()
    cpu_before = _cpu_seconds(target.milter.pid) if target.milter else None
    sent = sum(traffic.split(messages, stream) for stream in traffic.MIX)
    expected = sum(traffic.split(messages, s) for s in traffic.MIX if s.delivered_with(target.setup.filter))
    errors = target.workdir / "smtp-source.err"
    finished: list[float] = []
    lock = threading.Lock()

    def wait_for(proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        with lock:
            finished.append(time.perf_counter())

    procs: list[subprocess.Popen[bytes]] = []
    with open(errors, "wb") as err:
        start = time.perf_counter()
        try:
            for stream in traffic.MIX:
                procs.append(
                    subprocess.Popen(
                        _source_command(stream, sessions, messages, files[stream.name], postfix.smtp_port),
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    )  # fmt: skip
                )
            waiters = [threading.Thread(target=wait_for, args=(proc,), daemon=True) for proc in procs]
            for waiter in waiters:
                waiter.start()
            done_at: float | None = None
            deadline = start + timeout
            while time.perf_counter() < deadline:
                if done_at is None and sink.received() - before >= expected:
                    done_at = time.perf_counter()
                with lock:
                    all_sent = len(finished) == len(procs)
                if all_sent and done_at is not None:
                    break
                time.sleep(0.005)
        finally:
            for proc in procs:  # only our own children, also when interrupted
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for waiter in waiters:
            waiter.join(5)
    failed = [proc.args for proc in procs if proc.returncode != 0]
    if failed:
        output = errors.read_text(errors="replace")[-2000:]
        raise BenchError(f"{target.setup.name}: smtp-source failed: {failed}\n{output}")
    if done_at is None or len(finished) != len(procs):
        got = sink.received() - before
        raise BenchError(
            f"{target.setup.name}: s={sessions}: sink got {got} of {expected} messages within {timeout:.0f}s\n"
            f"--- maillog tail ---\n{postfix.maillog()[-3000:]}"
        )
    _wait_drained(target, before + expected)
    send_seconds = max(finished) - start
    done_seconds = max(done_at, max(finished)) - start
    milter_cpu_ms = None
    if target.milter and cpu_before is not None:
        milter_cpu_ms = (_cpu_seconds(target.milter.pid) - cpu_before) * 1000 / sent
    return Sample(
        accepted_per_s=sent / send_seconds,
        delivered_per_s=sent / done_seconds,
        send_seconds=send_seconds,
        done_seconds=done_seconds,
        messages=sent,
        delivered=expected,
        milter_cpu_ms=milter_cpu_ms,
    )


_TICKS = os.sysconf("SC_CLK_TCK")
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and all its threads so far, ended ones included.

    The process's CPU-time clock (clock_getcpuclockid) has nanosecond resolution; /proc/PID/stat's clock
    ticks (10 ms) are the fallback.
    """
    if pid is None:
        return 0.0
    clock = ctypes.c_int()
    if _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
        with contextlib.suppress(OSError):
            return time.clock_gettime(clock.value)
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _wait_drained(target: Target, expected_total: int, timeout: float = 30.0) -> None:
    """Queue empty and not one message more than expected at the sink: the setup did what it should."""
    deadline = time.monotonic() + timeout
    while not target.postfix.queue_empty():
        if time.monotonic() > deadline:
            raise BenchError(f"{target.setup.name}: queue not empty after the run\n{target.postfix.maillog()[-3000:]}")
        time.sleep(0.02)
    got = target.postfix.sink.received()  # type: ignore[attr-defined]
    if got != expected_total:
        raise BenchError(f"{target.setup.name}: sink has {got} messages, expected {expected_total}")


# --------------------------------------------------------------------------- rounds and report


@dataclass
class Results:
    sessions: list[int]
    rounds: int
    messages: int
    samples: dict[str, dict[int, list[Sample]]] = field(default_factory=dict)
    machine: dict[str, object] = field(default_factory=dict)
    review_ms: dict[str, list[float]] = field(default_factory=dict)
    """Per setup: milliseconds per review request sent one at a time (``review_latency``)."""

    def add(self, setup: str, sessions: int, sample: Sample) -> None:
        self.samples.setdefault(setup, {}).setdefault(sessions, []).append(sample)

    def median(self, setup: str, sessions: int, metric: str) -> float:
        return statistics.median(getattr(s, metric) for s in self.samples[setup][sessions])

    def spread(self, setup: str, sessions: int, metric: str) -> tuple[float, float]:
        values = [getattr(s, metric) for s in self.samples[setup][sessions]]
        return min(values), max(values)


def machine_facts() -> dict[str, object]:
    def command_output(args: list[str]) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        except OSError:
            return "?"

    import milter as libmilter  # pymilter's C extension, for the libmilter version

    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "postfix": command_output([POSTCONF, "-d", "-h", "mail_version"]),
        "python": platform.python_version(),
        "libmilter": ".".join(str(x) for x in libmilter.getversion()),
        "kernel": platform.release(),
    }


def run_benchmark(
    setups: Sequence[Setup],
    sessions: Sequence[int],
    rounds: int,
    messages: int,
    warmup: int,
    base: Path,
    keep: bool,
    timeout: float,
    progress: bool = True,
) -> Results:
    results = Results(sessions=list(sessions), rounds=rounds, messages=messages, machine=machine_facts())
    review_count = max(20, messages // 10)
    files = traffic.write_message_files(base / f"amzguard-bench-messages-{os.getpid()}")
    try:
        with running_targets(setups, base, keep) as targets:
            if warmup:
                for target in targets:
                    for count in sessions:
                        run_once(target, count, max(warmup, count), files, timeout)
            for round_index in range(rounds):
                order = targets[round_index % len(targets) :] + targets[: round_index % len(targets)]
                session_order = list(sessions) if round_index % 2 == 0 else list(reversed(sessions))
                for count in session_order:
                    for target in order:
                        sample = run_once(target, count, messages, files, timeout)
                        results.add(target.setup.name, count, sample)
                        if progress:
                            print(
                                f"  round {round_index + 1}/{rounds} s={count:<3} {target.setup.name:<16}"
                                f" accepted {sample.accepted_per_s:7.1f}/s  delivered {sample.delivered_per_s:7.1f}/s",
                                file=sys.stderr, flush=True,
                            )  # fmt: skip
            # SQLite against PostgreSQL (the +2 ms target), both with the content rules at their defaults;
            # the content-off setup is only there for the throughput comparison.
            reviewers = [target for target in targets
                         if target.setup.milter == "amzguard" and target.setup.socket == "unix" and target.setup.content]  # fmt: skip
            for round_index in range(rounds):  # interleaved, like the rates
                for target in reviewers[round_index % max(1, len(reviewers)) :] + reviewers[: round_index % max(1, len(reviewers))]:
                    first = 1 + round_index * review_count
                    results.review_ms.setdefault(target.setup.name, []).extend(review_latency(target, review_count, first))
    finally:
        shutil.rmtree(files[traffic.MIX[0].name].parent, ignore_errors=True)
    results.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


METRICS = (("accepted_per_s", "accepted"), ("delivered_per_s", "delivered"))


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:5.2f}" if reference else "    -"


def format_report(results: Results, setups: Sequence[Setup], smoke: bool = False) -> str:
    names = [setup.name for setup in setups]
    m = results.machine
    lines = [
        "amzguard pipeline benchmark: smtp-source -> Postfix -> smtp-sink (one machine, one run)",
        *(["SMOKE RUN: a few messages, one round; the figures only show that the benchmark works"] if smoke else []),
        f"machine: {m.get('cores')} cores ({m.get('cores_usable')} usable), load average at start "
        f"{m.get('load_average')} and end {m.get('load_average_end')}; Postfix {m.get('postfix')}, "
        f"Python {m.get('python')}, libmilter {m.get('libmilter')}, Linux {m.get('kernel')}",
        f"runs: {results.rounds} round(s) per figure (median; setup order rotated each round), "
        f"{results.messages} messages per run, ~{traffic.MESSAGE_SIZE} B each, a new SMTP session per message",
        f"mix {traffic.MIX_NAME} (one smtp-source process per stream, sessions and messages split in these shares):",
        traffic.describe_mix(),
        "  order mail is delivered everywhere; buyer mail is refused at RCPT by amzguard (sender not allowed",
        "  on the review channel) and by the error: transport map; review requests (tag header, from the",
        "  review sender) are delivered by amzguard with the marker removed and refused by the transport map;",
        "  Postfix alone and the no-op milter deliver everything.",
        "accepted/s: messages answered by Postfix (queued or refused) per second of sending;",
        "delivered/s: the same messages per second until the last one that may leave reached the sink.",
        f"no-op milter: {negotiated_steps()}.",
        "no-op C libmilter (bench/noop_milter.c): negotiated like amzguard below, returns CONTINUE (SKIP for",
        "  the body) everywhere, so every message gets its header fields and end of message.",
        "amzguard: HELO, end-of-headers, unknown negotiated away; connect, MAIL and headers no-reply; RCPT and",
        "  DATA answered; body read only for messages a channel grants to a buyer (others answer the first",
        "  body chunk with SKIP); 'no content': the same amzguard with every content rule off; only the actions",
        "  it uses (add/delete recipient, change header). Mail without buyer recipients from a sender that may",
        "  use no tagged channel is accepted at DATA: no header, body or end-of-message events for it.",
    ]
    for sessions in results.sessions:
        for metric, title in METRICS:
            references = {name: _median_or_none(results, names, name, sessions, metric) for name, _ in REFERENCES}
            lines.append("")
            lines.append(f"sessions={sessions}  {title} messages/s")
            lines.append(
                f"  {'setup':<24} {'median':>8} {'min-max':>15}  "
                + " ".join(f"{heading:>11}" for _, heading in REFERENCES)
            )
            for setup in setups:
                value = results.median(setup.name, sessions, metric)
                low, high = results.spread(setup.name, sessions, metric)
                ratios = " ".join(f"{_ratio(value, references[name]):>11}" for name, _ in REFERENCES)
                lines.append(f"  {setup.label:<24} {value:8.1f} {f'{low:.0f}-{high:.0f}':>15}  {ratios}")
        milters = [setup for setup in setups if setup.milter]
        if milters:
            c_cpu = _median_or_none(results, names, "noop-c-unix", sessions, "milter_cpu_ms")
            lines.append("")
            lines.append(f"sessions={sessions}  milter CPU ms per message (user + system, all threads)")
            lines.append(f"  {'setup':<24} {'median':>8} {'min-max':>15}  {'/no-op same socket':>18} {'/C unix':>8}")
            for setup in milters:
                value = results.median(setup.name, sessions, "milter_cpu_ms")
                low, high = results.spread(setup.name, sessions, "milter_cpu_ms")
                noop_cpu = _median_or_none(results, names, f"noop-{setup.socket}", sessions, "milter_cpu_ms")
                lines.append(
                    f"  {setup.label:<24} {value:8.3f} {f'{low:.3f}-{high:.3f}':>15}  {_ratio(value, noop_cpu):>18}"
                    f" {_ratio(value, c_cpu):>8}"
                )
    if results.review_ms:
        lines.append("")
        lines.append("review requests one at a time, ms end to end (MAIL .. 250 after end of message), each a new order")
        lines.append(f"  {'setup':<28} {'count':>6} {'p50':>7} {'p99':>7}")
        for name, values in results.review_ms.items():
            label = next(setup.label for setup in setups if setup.name == name)
            lines.append(f"  {label:<28} {len(values):>6} {_percentile(values, 0.5):7.2f} {_percentile(values, 0.99):7.2f}")
    lines.append("")
    lines.extend(target_lines(results, names))
    return "\n".join(lines)


REFERENCES = (("postfix", "/no milter"), ("noop-unix", "/no-op unix"), ("noop-inet", "/no-op inet"),
              ("noop-c-unix", "/C unix"))  # fmt: skip
"""The setups every rate is divided by, and their column headings."""

TARGETS = (
    # (setup, metric, reference, at least / at most, bound)
    ("amzguard-unix", "milter_cpu_ms", "noop-unix", "<=", 0.5),
    ("amzguard-inet", "milter_cpu_ms", "noop-inet", "<=", 0.5),
    ("amzguard-unix", "accepted_per_s", "postfix", ">=", 0.80),
    ("amzguard-unix", "delivered_per_s", "postfix", ">=", 0.80),
    ("amzguard-unix", "accepted_per_s", "noop-c-unix", ">=", 1.0),
    ("amzguard-unix", "delivered_per_s", "noop-c-unix", ">=", 1.0),
    ("amzguard-inet", "accepted_per_s", "postfix", ">=", 0.80),
    ("amzguard-inet", "delivered_per_s", "postfix", ">=", 0.80),
)
"""Issue 13's targets: CPU per message at most half the no-op pymilter's; rates at least 0.80 of Postfix
alone and at least the C reference's (unix:; over inet: only the share of Postfix alone is a target)."""


def _median_or_none(results: Results, names: Sequence[str], name: str, sessions: int, metric: str) -> float | None:
    return results.median(name, sessions, metric) if name in names else None


def target_lines(results: Results, names: Sequence[str]) -> list[str]:
    lines = ["targets (medians of this run; ok or MISSED):"]
    for sessions in results.sessions:
        for setup, metric, reference, relation, bound in TARGETS:
            if setup not in names or reference not in names:
                continue
            ratio = results.median(setup, sessions, metric) / results.median(reference, sessions, metric)
            met = ratio <= bound if relation == "<=" else ratio >= bound
            what = "CPU/msg" if metric == "milter_cpu_ms" else metric.split("_")[0]
            lines.append(
                f"  s={sessions:<3} {setup:<14} {what:<9} / {reference:<12} {ratio:5.2f} {relation} {bound:.2f}"
                f"  {'ok' if met else 'MISSED'}"
            )
    lite, pg = results.review_ms.get("amzguard-unix"), results.review_ms.get("amzguard-pg")
    if lite and pg:
        for fraction, word in ((0.5, "p50"), (0.99, "p99")):
            extra = _percentile(pg, fraction) - _percentile(lite, fraction)
            ratio = _percentile(pg, fraction) / _percentile(lite, fraction)
            lines.append(f"  review request {word}: PostgreSQL - SQLite {extra:+.2f} ms (ratio {ratio:.2f}), target <= +2 ms "
                         f"{'ok' if extra <= 2.0 else 'MISSED'}")  # fmt: skip
    comparisons = (("amzguard-unix", BASELINE.name, "amzguard, unix: / the baseline amzguard, unix:"),
                   ("amzguard-unix-macros", "amzguard-unix", "few macros / all of Postfix's default macros"))  # fmt: skip
    for changed, before, title in comparisons:
        if changed not in names or before not in names:
            continue
        lines.append(f"what the change bought ({title}):")
        for sessions in results.sessions:
            parts = [f"{what} {results.median(changed, sessions, metric) / results.median(before, sessions, metric):.2f}"
                     for metric, what in (("milter_cpu_ms", "CPU/msg"), *METRICS)]  # fmt: skip
            lines.append(f"  s={sessions:<3} " + ", ".join(parts))
    return lines


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def results_json(results: Results) -> dict[str, object]:
    return {
        "machine": results.machine,
        "rounds": results.rounds,
        "messages": results.messages,
        "sessions": results.sessions,
        "mix_name": traffic.MIX_NAME,
        "mix": [{"name": s.name, "kind": s.kind.value, "share": s.share} for s in traffic.MIX],
        "setups": {
            name: {
                str(sessions): {
                    "accepted_per_s": results.median(name, sessions, "accepted_per_s"),
                    "delivered_per_s": results.median(name, sessions, "delivered_per_s"),
                    "milter_cpu_ms": (
                        results.median(name, sessions, "milter_cpu_ms")
                        if samples[0].milter_cpu_ms is not None
                        else None
                    ),
                    "samples": [asdict(sample) for sample in samples],
                }
                for sessions, samples in per_sessions.items()
            }
            for name, per_sessions in results.samples.items()
        },
        "review_ms": results.review_ms,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per figure (default 5)")
    parser.add_argument("--messages", type=int, default=2000, help="messages per run (default 2000)")
    parser.add_argument("--sessions", default="10,50", help="smtp-source sessions, comma-separated")
    parser.add_argument("--setups", default=",".join(SETUP_NAMES),
                        help=f"subset of {','.join(SETUP_NAMES)}; also {','.join(s.name for s in OPTIONAL_SETUPS)}")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured messages per setup first (default 200)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take (default 300)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"), help="where the instances live (default /tmp)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the amzguard package found in DIR (e.g. `git archive main milter | tar -x -C DIR`"
                        " then DIR/milter) over unix:, as the setup baseline-unix")
    parser.add_argument("--json", type=Path, help="also write medians and every sample as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the instances' directories (logs) afterwards")
    parser.add_argument("--quiet", action="store_true", help="no per-run progress on stderr")
    parser.add_argument("--smoke", action="store_true", help="a few messages, one round (checks the bench works)")
    parser.add_argument("--mix", choices=sorted(traffic.MIXES), default="standard",
                        help="standard (mostly order mail) or review (mostly review requests the content rules read)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("bench.pipeline: needs root (it runs private Postfix instances, as `make test` does)", file=sys.stderr)
        return 2
    if args.smoke:
        args.rounds, args.messages, args.warmup = 1, 20, 0
    traffic.select_mix(args.mix)
    wanted = [name.strip() for name in args.setups.split(",") if name.strip()]
    known = SETUP_NAMES + tuple(setup.name for setup in OPTIONAL_SETUPS)
    unknown = set(wanted) - set(known)
    if unknown:
        print(f"bench.pipeline: unknown setup(s) {sorted(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    setups = [setup for setup in (*SETUPS, *OPTIONAL_SETUPS) if setup.name in wanted]
    if args.baseline:
        if not (args.baseline / "amzguard" / "__init__.py").is_file():
            print(f"bench.pipeline: no amzguard package in {args.baseline}", file=sys.stderr)
            return 2
        setups.append(replace(BASELINE, pythonpath=str(args.baseline.resolve())))
    sessions = [int(value) for value in args.sessions.split(",")]
    try:
        results = run_benchmark(
            setups, sessions, args.rounds, args.messages, args.warmup, args.workdir, args.keep, args.timeout,
            progress=not args.quiet,
        )  # fmt: skip
    except BenchError as exc:
        print(f"bench.pipeline: {exc}", file=sys.stderr)
        return 1
    print(format_report(results, setups, smoke=args.smoke))
    if args.json:
        args.json.write_text(json.dumps(results_json(results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
