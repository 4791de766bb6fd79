"""The local Kafka stack: a real single-node Apache Kafka broker, and the v1 topics.

Why this shape:

* The broker is the official Apache Kafka distribution, run in KRaft *combined* mode (one
  JVM is both broker and controller), so local runs exercise the same transactions,
  compaction and group protocol as production. Its jars come from Maven Central through
  ``mvn dependency:copy-dependencies`` (``finops/kafka/pom.xml``): no Docker, no tarball
  mirror, and Maven's local repository makes re-fetching cheap.
* Jars are cached per Kafka version in ``<cache_dir>/kafka-<version>/libs`` (shared by all
  data dirs); broker state lives in ``<data_dir>/kafka`` (config, pid file, logs, storage),
  so stacks with different data dirs and ports run side by side.
* The broker runs detached (own session) so it outlives ``finops stack up``; it is found again
  through its pid file, trusted only if that pid still runs ``kafka.Kafka`` with *this*
  data dir's config (pids get reused).
* With ``FINOPS_KAFKA_BOOTSTRAP`` set nothing is started or stopped: only the topics are
  ensured on that cluster.

Every expected failure raises :class:`StackError` with a one-line message for the user.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from finops.schemas import topics
from finops.settings import Settings

Log = Callable[[str], object]

MIN_JAVA = 17
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
_MAVEN_TIMEOUT = 900.0
_FORMAT_TIMEOUT = 120.0
_COMPLETE_MARKER = ".complete"
_HOST = "127.0.0.1"


class StackError(Exception):
    """An expected failure of the local stack; ``str()`` is one line meant for the user."""


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class StackStatus:
    """What ``finops status`` shows; also returned by :func:`up`."""

    mode: Literal["local", "external"]
    bootstrap: str
    running: bool
    pid: int | None
    data_dir: Path
    log_file: Path | None
    kafka_version: str
    jars_cached: bool
    topics: list[str] | None  # names present on the cluster; None when it was not reachable
    started: bool = False  # True only when this call of up() started the broker

    def lines(self) -> list[str]:
        """A few human-readable lines (no markup), one fact per line."""
        if self.mode == "external":
            state = "reachable" if self.running else "NOT reachable"
            out = [f"kafka:  external cluster at {self.bootstrap}, {state}"]
        else:
            state = f"running (pid {self.pid})" if self.running else "stopped"
            jars = "jars cached" if self.jars_cached else "jars not fetched yet"
            out = [
                f"kafka:  local Apache Kafka {self.kafka_version} on {self.bootstrap}, {state}, {jars}",
                f"data:   {self.data_dir}",
                f"log:    {self.log_file}",
            ]
        if self.topics is not None:
            missing = [spec.name for spec in topics.ALL if spec.name not in self.topics]
            present = len(topics.ALL) - len(missing)
            detail = f" (missing: {', '.join(missing)})" if missing else ""
            out.append(f"topics: {present}/{len(topics.ALL)} v1 topics present{detail}")
        return out


def status(settings: Settings) -> StackStatus:
    """Inspect the stack without changing anything (contacts the cluster only if it may be up)."""
    files = _BrokerFiles.of(settings)
    if settings.external_kafka:
        present = _try_list_topics(settings.bootstrap)
        pid, running = None, present is not None
    else:
        pid = _running_pid(files)
        running = pid is not None
        present = _try_list_topics(settings.bootstrap) if running else None
    return StackStatus(
        mode="external" if settings.external_kafka else "local",
        bootstrap=settings.bootstrap,
        running=running,
        pid=pid,
        data_dir=files.home.parent,
        log_file=None if settings.external_kafka else files.log_file,
        kafka_version=settings.kafka_version,
        jars_cached=jars_cached(settings),
        topics=present,
    )


# --------------------------------------------------------------------------- jars


def jars_dir(settings: Settings) -> Path:
    """Where the jars of ``settings.kafka_version`` live (shared by every data dir)."""
    return settings.cache_dir.expanduser().resolve() / f"kafka-{settings.kafka_version}" / "libs"


def jars_cached(settings: Settings) -> bool:
    """True once a fetch completed; a fetch interrupted half-way does not count."""
    return (jars_dir(settings) / _COMPLETE_MARKER).is_file()


def ensure_jars(settings: Settings, log: Log = print) -> Path:
    """Fetch the broker's jars with Maven unless already cached; return their directory.

    Java and Maven are only required (and checked) when a fetch is needed."""
    libs = jars_dir(settings)
    if jars_cached(settings):
        return libs
    find_java()  # Maven runs on it, and the jars are useless without it
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) not found on PATH; install Maven or set FINOPS_KAFKA_BOOTSTRAP "
                         "to use an existing cluster")
    # The lock makes concurrent `finops stack up` runs (or test sessions) fetch only once.
    with _locked(libs.parent / ".lock"):
        if not jars_cached(settings):
            log(f"fetching Apache Kafka {settings.kafka_version} jars from Maven Central into {libs} "
                "(once per version)")
            _fetch_jars(mvn, settings.kafka_version, libs)
    return libs


def _fetch_jars(mvn: str, version: str, libs: Path) -> None:
    """Run Maven into a clean ``libs``, then write the marker that makes the cache valid."""
    pom = libs.parent / "pom.xml"
    pom.write_bytes(resources.files("finops").joinpath("kafka/pom.xml").read_bytes())
    shutil.rmtree(libs, ignore_errors=True)  # leftovers of an interrupted fetch may be truncated
    _run([mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom), f"-Dkafka.version={version}",
          "dependency:copy-dependencies", f"-DoutputDirectory={libs}"],
         what=f"Maven could not fetch Kafka {version}", timeout=_MAVEN_TIMEOUT, cwd=libs.parent)
    (libs / _COMPLETE_MARKER).write_text(f"{version}\n")


def find_java() -> str:
    """The ``java`` to run (``$JAVA_HOME/bin/java``, else PATH), checked to be >= 17."""
    java = _java_path()
    if java is None:
        raise StackError(f"Java (java) not found on PATH; install a Java {MIN_JAVA}+ runtime or set "
                         "FINOPS_KAFKA_BOOTSTRAP to use an existing cluster")
    output = _run([java, "-version"], what=f"{java} -version failed", timeout=30)
    major = _java_major(output)
    if major is None:
        raise StackError(f"could not tell the Java version of {java}: {_telling_line(output)}")
    if major < MIN_JAVA:
        raise StackError(f"Kafka needs Java {MIN_JAVA}+, but {java} is Java {major}; install a newer "
                         "Java (or point JAVA_HOME at one)")
    return java


def _java_path() -> str | None:
    """``$JAVA_HOME/bin/java`` when that exists (as Maven does), else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (candidate := Path(home) / "bin" / "java").is_file():
        return str(candidate)
    return shutil.which("java")


def _java_major(version_output: str) -> int | None:
    """Major version from ``java -version``: ``"17.0.15"`` -> 17, old style ``"1.8.0_392"`` -> 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


# --------------------------------------------------------------------------- broker


@dataclass(frozen=True)
class _BrokerFiles:
    """The files of one local broker, all under ``<data_dir>/kafka``."""

    home: Path

    @classmethod
    def of(cls, settings: Settings) -> _BrokerFiles:
        # Absolute: the config path is how we recognise our process in its command line.
        return cls(settings.data_dir.expanduser().resolve() / "kafka")

    @property
    def config(self) -> Path:
        return self.home / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.home / "log4j2.properties"

    @property
    def storage(self) -> Path:
        return self.home / "storage"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    @property
    def console_file(self) -> Path:
        """The JVM's stdout/stderr: empty unless the JVM itself fails (bad heap size, crash)."""
        return self.home / "broker.out"

    @property
    def lock(self) -> Path:
        return self.home / ".lock"


def up(settings: Settings, log: Log = print, timeout: float = READY_TIMEOUT) -> StackStatus:
    """Make Kafka usable: start the local broker unless it runs (or the cluster is external),
    wait until it answers, and create missing v1 topics. Idempotent."""
    if settings.external_kafka:
        log(f"using the existing Kafka cluster at {settings.bootstrap}; nothing to start")
        started = False
    else:
        started = _ensure_broker(settings, log, timeout)
    wait_ready(settings.bootstrap, timeout)  # a broker found running may still be starting
    created = ensure_topics(settings)
    log(f"created topics: {', '.join(created)}" if created else "all v1 topics present")
    return replace(status(settings), started=started)


def _ensure_broker(settings: Settings, log: Log, timeout: float) -> bool:
    """Start the local broker unless ours already runs with these settings; True if started."""
    files = _BrokerFiles.of(settings)
    with _locked(files.lock):  # two concurrent `up`s must not both start a broker
        pid = _running_pid(files)
        if pid is None:
            _start(settings, files, log, timeout)
            return True
        if files.config.read_text() != _server_properties(settings, files):
            raise StackError(f"the Kafka broker (pid {pid}) runs with other settings than these "
                             "(port or partitions); run `finops stack down`, then `finops stack up` to apply them")
        log(f"Kafka broker already running (pid {pid}) on {settings.bootstrap}")
        return False


def down(settings: Settings, log: Log = print) -> bool:
    """Stop the local broker (SIGTERM, SIGKILL after ``STOP_TIMEOUT``); True if one was running."""
    if settings.external_kafka:
        log(f"Kafka is the external cluster at {settings.bootstrap}; nothing to stop")
        return False
    files = _BrokerFiles.of(settings)
    with _locked(files.lock):
        pid = _running_pid(files)
        files.pid_file.unlink(missing_ok=True)
        if pid is None:
            log("no local Kafka broker running")
            return False
        log(f"stopping Kafka broker (pid {pid})")
        _stop(pid, files, log)
        return True


def _start(settings: Settings, files: _BrokerFiles, log: Log, timeout: float) -> None:
    """Start a broker for ``files`` (caller holds the lock) and wait until it serves requests."""
    _check_ports_free(settings.kafka_port)
    java = find_java()
    classpath = f"{ensure_jars(settings, log)}/*"
    files.home.mkdir(parents=True, exist_ok=True)
    files.config.write_text(_server_properties(settings, files))
    files.log4j.write_bytes(resources.files("finops").joinpath("kafka/log4j2.properties").read_bytes())
    jvm_logging = [f"-Dlog4j2.configurationFile={files.log4j}", f"-Dkafka.logs.dir={files.home}"]
    if not (files.storage / "meta.properties").is_file():
        log(f"formatting Kafka storage in {files.storage}")
        _run([java, *jvm_logging, "-cp", classpath, "kafka.tools.StorageTool", "format",
              "-t", _new_cluster_id(), "-c", str(files.config)],
             what="formatting Kafka storage failed", timeout=_FORMAT_TIMEOUT)
    log_offset = files.log_file.stat().st_size if files.log_file.exists() else 0
    with files.console_file.open("wb") as console:
        broker = subprocess.Popen(
            [java, f"-Xmx{settings.kafka_heap}", *jvm_logging, "-cp", classpath, "kafka.Kafka",
             str(files.config)],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            cwd=files.home, start_new_session=True)  # own session: Ctrl-C on the CLI spares it
    files.pid_file.write_text(f"{broker.pid}\n")
    log(f"started Kafka {settings.kafka_version} broker (pid {broker.pid}) on {settings.bootstrap}; "
        f"log: {files.log_file}")
    try:
        _wait_until_serving(settings.bootstrap, timeout, broker)
    except StackError as exc:
        if broker.poll() is None:
            _stop(broker.pid, files, log)  # a half-started broker would block the next `up`
        files.pid_file.unlink(missing_ok=True)
        raise StackError(_explain_failure(str(exc), files, log_offset, log)) from None


def _server_properties(settings: Settings, files: _BrokerFiles) -> str:
    """Broker config, rewritten at each start so port/partition settings take effect.

    A static voter (``controller.quorum.voters``) keeps the controller address out of the
    metadata log, so the port can change between runs of one data dir."""
    port, controller = settings.kafka_port, settings.kafka_port + 1
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{_HOST}:{controller}",
        "listeners": f"PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{_HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(files.storage),
        "num.partitions": str(settings.topic_partitions),
        "auto.create.topics.enable": "false",  # topics come from ensure_topics, typos fail loudly
        # A single node cannot host the default 3 replicas of the internal topics.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",  # no 3 s pause before each first rebalance
    }
    header = "# Written by finops.stack at each start of the local broker; edits are overwritten.\n"
    return header + "".join(f"{key}={value}\n" for key, value in props.items())


def _new_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` makes it (URL-safe base64 of a random
    UUID, no padding), without paying a JVM start. Kafka avoids ids starting with '-' since
    they read like command-line options; so do we."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _check_ports_free(port: int) -> None:
    """Fail fast with a clear message instead of a bind error buried in the broker log."""
    for candidate, role in ((port, ""), (port + 1, " (the Kafka controller's, FINOPS_KAFKA_PORT+1)")):
        if not _port_free(candidate):
            raise StackError(f"port {candidate} on {_HOST}{role} is in use by another process; "
                             "set FINOPS_KAFKA_PORT")


def free_port_pair() -> int:
    """A port p with p and p+1 free on 127.0.0.1, for a broker beside others (tests, benchmarks)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind((_HOST, 0))
            port = sock.getsockname()[1]
        if port < 65535 and _port_free(port + 1):
            return port
    raise StackError("no free pair of ports on 127.0.0.1")


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as the broker uses it: sockets in TIME_WAIT from a previous run don't count.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _running_pid(files: _BrokerFiles) -> int | None:
    """The pid in the pid file if it is still our broker, else None (stale or reused pid)."""
    try:
        pid = int(files.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_our_broker(pid, files) else None


def _is_our_broker(pid: int, files: _BrokerFiles) -> bool:
    """True if ``pid`` runs ``kafka.Kafka`` with this data dir's config. A zombie has an empty
    command line, so a dead-but-unreaped broker counts as gone."""
    cmdline = _cmdline(pid)
    return "kafka.Kafka" in cmdline and str(files.config) in cmdline


def _cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' if none): /proc on Linux, ``ps`` elsewhere (macOS)."""
    if Path("/proc/self/cmdline").exists():
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    result = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True,
                            check=False)
    return result.stdout


def _stop(pid: int, files: _BrokerFiles, log: Log) -> None:
    """SIGTERM (Kafka then shuts down cleanly, no log recovery at next start), SIGKILL if stuck."""
    for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        with suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, files, grace):
            return
        if sig == signal.SIGTERM:
            log(f"Kafka broker (pid {pid}) did not stop within {grace:.0f} s; killing it")
    raise StackError(f"Kafka broker (pid {pid}) survived SIGKILL; stop it by hand")


def _wait_gone(pid: int, files: _BrokerFiles, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid, files):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _gone(pid: int, files: _BrokerFiles) -> bool:
    """Whether the broker has exited. If it is our child (this process started it, as in
    tests) it must also be reaped, or it would linger as a zombie while we live."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # someone else's child: its command line empties when it exits
        return not _is_our_broker(pid, files)
    return reaped == pid


def _explain_failure(error: str, files: _BrokerFiles, log_offset: int, log: Log) -> str:
    """Log the condensed output of the failed start (the log past ``log_offset``, the JVM
    console) and return ``error`` extended with the line most likely to say why."""
    log_lines = _condensed(_read_from(files.log_file, log_offset))
    console_lines = _condensed(_read_from(files.console_file, 0))
    for path, lines in ((files.log_file, log_lines), (files.console_file, console_lines)):
        if lines:
            log(f"last lines of {path}:")
            for line in lines[-15:]:
                log(f"  {line}")
    # Kafka logs a fatal exception's message as the line after "ERROR Exiting Kafka ...";
    # the JVM's own first console line names its problem (bad -Xmx, missing class).
    exceptions = [line for line in log_lines if _EXCEPTION_LINE.match(line)]
    reason = exceptions[-1] if exceptions else console_lines[0] if console_lines else ""
    return f"{error}: {reason} (log: {files.log_file})" if reason else f"{error} (log: {files.log_file})"


_EXCEPTION_LINE = re.compile(r"^[\w.$]+(Exception|Error)\b")


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset if offset <= path.stat().st_size else 0)  # smaller: the log rolled over
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _condensed(text: str) -> list[str]:
    """Non-blank lines without Java stack frames, which bury the exception messages."""
    return [line for line in text.splitlines()
            if line.strip() and not re.match(r"\s+(at |\.\.\. \d+ more)", line)]


# --------------------------------------------------------------------------- clients and topics


def wait_ready(bootstrap: str, timeout: float = READY_TIMEOUT) -> None:
    """Block until the cluster at ``bootstrap`` answers metadata requests with a live broker."""
    _wait_until_serving(bootstrap, timeout, None)


def _wait_until_serving(bootstrap: str, timeout: float, broker: subprocess.Popen[bytes] | None) -> None:
    """Poll metadata until a broker is listed, failing early if ``broker`` (our child) exits.

    A listed broker matters: in KRaft the listener may answer before the broker is unfenced,
    and creating topics then fails with "0 broker(s) are registered"."""
    admin = _admin(bootstrap)
    deadline = time.monotonic() + timeout
    last_error = "no broker listed in metadata yet"
    while True:
        if broker is not None and broker.poll() is not None:
            raise StackError(f"Kafka broker exited with code {broker.returncode} during startup")
        try:
            if admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic()))).brokers:
                return
        except KafkaException as exc:
            last_error = _kafka_error(exc)
        if time.monotonic() >= deadline:
            raise StackError(f"Kafka at {bootstrap} did not answer within {timeout:.0f} s ({last_error})")
        time.sleep(0.1)


topic_config = topics.topic_config


def ensure_topics(settings: Settings, bootstrap: str | None = None) -> list[str]:
    """Create the v1 topics missing on the cluster; return the names created.

    Existing topics are left as they are. On the local broker the replication factor is 1;
    on an external cluster -1 asks for the broker's default (CreateTopics v4+, Kafka >= 2.4)."""
    bootstrap = bootstrap or settings.bootstrap
    admin = _admin(bootstrap)
    existing = set(_list_topics(admin, bootstrap, timeout=10.0))
    wanted = (*topics.ALL, topics.changelog_spec(topics.changelog_name(settings.group("ledger"))))
    missing = [spec for spec in wanted if spec.name not in existing]
    if not missing:
        return []
    replication = -1 if settings.external_kafka else 1
    futures = admin.create_topics(
        [NewTopic(spec.name, num_partitions=settings.topic_partitions, replication_factor=replication,
                  config=topic_config(spec))
         for spec in missing],
        operation_timeout=30, request_timeout=30)
    created = []
    for spec in missing:
        try:
            futures[spec.name].result()
            created.append(spec.name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a concurrent `up` won the race
                raise StackError(f"could not create topic {spec.name} on {bootstrap}: "
                                 f"{_kafka_error(exc)}") from None
    return created


def _admin(bootstrap: str) -> AdminClient:
    """An AdminClient that stays silent (librdkafka would print every refused connection to
    stderr; our callers report one line instead) and retries connections quickly."""
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                        "reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 1000})


def _list_topics(admin: AdminClient, bootstrap: str, timeout: float) -> list[str]:
    try:
        return sorted(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise StackError(f"could not list topics on {bootstrap}: {_kafka_error(exc)}") from None


def _try_list_topics(bootstrap: str, timeout: float = 5.0) -> list[str] | None:
    try:
        return _list_topics(_admin(bootstrap), bootstrap, timeout)
    except StackError:
        return None


def _kafka_error(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


# --------------------------------------------------------------------------- helpers


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, released when the block ends or the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], *, what: str, timeout: float, cwd: Path | None = None) -> str:
    """Run a tool to completion; return its output, or raise ``what: <its telling line>``."""
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, errors="replace",
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise StackError(f"{what}: no result within {timeout:.0f} s") from None
    except OSError as exc:
        raise StackError(f"{what}: {exc.strerror or exc}") from None
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise StackError(f"{what}: {_telling_line(output) or f'exit code {result.returncode}'}")
    return output


_BOILERPLATE = re.compile(  # Maven's advice after the actual error
    r"(To see the full stack trace|Re-run Maven|For more information about|\[Help \d+\]|"
    r"After correcting the problems|mvn <args> -rf)")


def _telling_line(output: str) -> str:
    """The last line of a tool's output that says something: ANSI colours, ``[ERROR]``
    prefixes and Maven's generic advice stripped."""
    for raw in reversed(output.splitlines()):
        line = re.sub(r"\x1b\[[0-9;]*m", "", raw)
        line = re.sub(r"^\[(ERROR|WARNING|INFO)\]\s*", "", line.strip())
        line = re.sub(r"\s*-> \[Help \d+\]$", "", line)
        if line and not _BOILERPLATE.search(line):
            return line
    return ""
