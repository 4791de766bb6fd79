"""finops.stack against a real Apache Kafka broker.

The broker jars go to the default cache dir, so they are fetched once per machine, not per
test run. Each broker gets its own tmp data dir and free ports, so these tests can run next
to a developer's own `finops up` (and two of them run side by side here).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from finops import stack
from finops.schemas import topics
from finops.settings import Settings


def _quiet(message: str) -> None:
    """A ``log`` for stack functions that keeps test output clean."""


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair() -> int:
    """A free port whose successor (the controller port) is free as well."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < 65535 and _bindable(port + 1):
            return port
    raise RuntimeError("no free pair of consecutive ports")


def _local_settings(data_dir: Path) -> Settings:
    """Settings for a local broker in ``data_dir``, whatever FINOPS_* says in the environment."""
    return Settings(data_dir=data_dir, kafka_port=_free_port_pair(), kafka_bootstrap=None)


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.1)


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of the broker shared by this module; stopped (and checked gone) at the end."""
    settings = _local_settings(tmp_path_factory.mktemp("stack"))
    yield settings
    status = stack.status(settings)
    stack.down(settings, log=_quiet)
    assert status.pid is None or not Path(f"/proc/{status.pid}").exists()


@pytest.fixture(scope="module")
def running(local: Settings) -> stack.StackStatus:
    """The result of the first ``up`` of the shared broker."""
    return stack.up(local, log=_quiet)


@pytest.mark.integration
def test_up_starts_broker_with_v1_topics(local: Settings, running: stack.StackStatus) -> None:
    assert running.started and running.running and running.mode == "local"
    assert running.pid is not None and Path(f"/proc/{running.pid}").exists()
    assert running.jars_cached and running.bootstrap == f"127.0.0.1:{local.kafka_port}"
    admin = _admin(local.bootstrap)
    metadata = admin.list_topics(timeout=10)
    for spec in topics.ALL:
        assert spec.name in metadata.topics
        assert len(metadata.topics[spec.name].partitions) == local.topic_partitions
    compacted = {spec.name for spec in topics.ALL if spec.compacted}
    assert {topics.BALANCES, topics.ENFORCEMENT} <= compacted
    resources = [ConfigResource(ResourceType.TOPIC, spec.name) for spec in topics.ALL]
    for resource, future in admin.describe_configs(resources).items():
        expected = "compact" if resource.name in compacted else "delete"
        config = future.result(timeout=10)
        assert config["cleanup.policy"].value == expected, resource.name
        # inputs: the broker stamps records (ts_in_future judges against a time that is in the log)
        stamp = "LogAppendTime" if resource.name in topics.INPUTS else "CreateTime"
        assert config["message.timestamp.type"].value == stamp, resource.name
    changelog = topics.changelog_name(f"{local.group_prefix}-ledger")  # the default ledger group's state
    assert len(metadata.topics[changelog].partitions) == local.topic_partitions
    config = admin.describe_configs([ConfigResource(ResourceType.TOPIC, changelog)])
    assert next(iter(config.values())).result(timeout=10)["cleanup.policy"].value == "compact"


@pytest.mark.integration
def test_second_up_is_a_no_op(local: Settings, running: stack.StackStatus) -> None:
    messages: list[str] = []
    again = stack.up(local, log=messages.append)
    assert not again.started
    assert again.pid == running.pid
    assert any("already running" in message for message in messages)


@pytest.mark.integration
def test_up_with_other_settings_than_the_running_broker_asks_for_a_restart(
        local: Settings, running: stack.StackStatus) -> None:
    moved = local.model_copy(update={"kafka_port": _free_port_pair()})
    with pytest.raises(stack.StackError, match=r"runs with other settings.*finops stack down"):
        stack.up(moved, log=_quiet)
    assert stack.status(local).pid == running.pid


@pytest.mark.integration
def test_status_reports_running_broker(local: Settings, running: stack.StackStatus) -> None:
    status = stack.status(local)
    assert status.running and status.pid == running.pid and not status.started
    assert status.log_file is not None and status.log_file.is_file()
    assert status.data_dir == local.data_dir.resolve()
    text = "\n".join(status.lines())
    assert f"running (pid {running.pid})" in text
    assert f"{len(topics.ALL)}/{len(topics.ALL)} v1 topics present" in text


@pytest.mark.integration
def test_external_mode_starts_nothing_and_creates_missing_topics(
        local: Settings, running: stack.StackStatus, tmp_path: Path) -> None:
    admin = _admin(local.bootstrap)
    admin.delete_topics([topics.REJECTED])[topics.REJECTED].result(timeout=10)
    _wait_for(lambda: topics.REJECTED not in admin.list_topics(timeout=5).topics, 10,
              "the deleted topic is gone")
    external = Settings(kafka_bootstrap=local.bootstrap, data_dir=tmp_path / "unused",
                        topic_partitions=2)

    status = stack.up(external, log=_quiet)

    assert status.mode == "external" and status.running and not status.started
    assert status.pid is None and status.topics is not None and topics.REJECTED in status.topics
    assert len(admin.list_topics(timeout=5).topics[topics.REJECTED].partitions) == 2
    assert not stack.down(external, log=_quiet)
    assert not (tmp_path / "unused").exists()
    assert stack.status(local).pid == running.pid  # the broker it points at is untouched


@pytest.mark.integration
def test_down_stops_broker_and_up_restarts_on_same_storage(tmp_path: Path) -> None:
    settings = _local_settings(tmp_path)
    try:
        first = stack.up(settings, log=_quiet)
        assert first.started and first.pid is not None
        meta = (tmp_path / "kafka" / "storage" / "meta.properties").read_text()

        assert stack.down(settings, log=_quiet)

        assert not Path(f"/proc/{first.pid}").exists()
        assert _port_closed(settings.kafka_port) and _port_closed(settings.kafka_port + 1)
        assert not stack.status(settings).running
        assert not stack.down(settings, log=_quiet)

        # A pid file naming some other live process is stale, not "running".
        (tmp_path / "kafka" / "broker.pid").write_text(f"{os.getpid()}\n")
        assert not stack.status(settings).running

        messages: list[str] = []
        second = stack.up(settings, log=messages.append)
        assert second.started and second.pid != first.pid
        assert (tmp_path / "kafka" / "storage" / "meta.properties").read_text() == meta  # not reformatted
        assert "all v1 topics present" in messages  # the topics survived the restart
    finally:
        stack.down(settings, log=_quiet)


@pytest.mark.parametrize("taken_offset", [0, 1], ids=["client-port", "controller-port"])
def test_up_refuses_a_port_in_use(tmp_path: Path, taken_offset: int) -> None:
    settings = _local_settings(tmp_path)
    taken = settings.kafka_port + taken_offset
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with pytest.raises(stack.StackError, match=f"port {taken} on 127.0.0.1.* is in use"):
            stack.up(settings, log=_quiet)
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def _bin_dir(tmp_path: Path, **scripts: str) -> Path:
    """A directory to use as the whole PATH, holding the given shell scripts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with an empty jar cache and no JAVA_HOME, so PATH alone decides the tools."""
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return _local_settings(tmp_path / "data").model_copy(update={"cache_dir": tmp_path / "cache"})


def test_missing_java_is_one_clear_line(fresh_cache: Settings, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(_bin_dir(tmp_path)))
    with pytest.raises(stack.StackError, match=r"^Java \(java\) not found on PATH; .*FINOPS_KAFKA_BOOTSTRAP"):
        stack.up(fresh_cache, log=_quiet)


def test_old_java_is_refused(fresh_cache: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_java = """echo 'openjdk version "11.0.22" 2024-01-16' >&2"""
    monkeypatch.setenv("PATH", str(_bin_dir(tmp_path, java=old_java)))
    with pytest.raises(stack.StackError, match=r"needs Java 17\+, but .* is Java 11"):
        stack.ensure_jars(fresh_cache, log=_quiet)


def test_missing_maven_is_one_clear_line(fresh_cache: Settings, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    java = shutil.which("java")
    assert java is not None
    monkeypatch.setenv("PATH", str(_bin_dir(tmp_path, java=f'exec "{java}" "$@"')))
    with pytest.raises(stack.StackError, match=r"^Maven \(mvn\) not found on PATH; install Maven or set "
                                               r"FINOPS_KAFKA_BOOTSTRAP to use an existing cluster$"):
        stack.up(fresh_cache, log=_quiet)
    assert not stack.jars_cached(fresh_cache)


def test_failed_maven_run_reports_its_error_and_is_retried(
        fresh_cache: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = shutil.which("java")
    assert java is not None
    calls = tmp_path / "mvn-calls"
    failing_mvn = f"""echo run >> "{calls}"
echo '[ERROR] Failed to execute goal on project kafka-broker-libs: Could not resolve dependencies -> [Help 1]'
echo '[ERROR] '
echo '[ERROR] Re-run Maven using the -X switch to enable full debug logging.'
echo '[ERROR] [Help 1] http://cwiki.apache.org/confluence/display/MAVEN/DependencyResolutionException'
exit 1"""
    monkeypatch.setenv("PATH", str(_bin_dir(tmp_path, java=f'exec "{java}" "$@"', mvn=failing_mvn)))
    for _ in range(2):
        with pytest.raises(stack.StackError) as raised:
            stack.ensure_jars(fresh_cache, log=_quiet)
        assert str(raised.value) == (
            f"Maven could not fetch Kafka {fresh_cache.kafka_version}: "
            "Failed to execute goal on project kafka-broker-libs: Could not resolve dependencies")
        assert not stack.jars_cached(fresh_cache)
    assert calls.read_text() == "run\nrun\n"
