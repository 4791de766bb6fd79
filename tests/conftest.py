"""Shared fixtures: one real Kafka broker and one embedded ClickHouse per test session.

The broker is the project's own local stack (official Apache Kafka jars, KRaft) on a
free port in a temporary data dir, or the cluster named by FINOPS_KAFKA_BOOTSTRAP. If it
cannot start, the whole session stops with the reason: integration tests never skip
silently. chdb allows one data path per process, so tests share one and each gets its
own database, consumer groups and tenants.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the tests' own helper modules
# litellm (the LiteLLM integration's tests) would fetch its model cost map from GitHub at import: use its bundled one
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from ch_backends import clickhouse_server_url, database_name  # noqa: E402,F401 - a fixture
from finops import stack  # noqa: E402
from finops.settings import Settings  # noqa: E402

_BROKER: dict[str, str] = {}


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory) -> Settings:
    """Settings pointing at a running broker with the v1 topics."""
    if os.environ.get("FINOPS_KAFKA_BOOTSTRAP"):
        settings = Settings(data_dir=tmp_path_factory.mktemp("finops"))
        stack.up(settings, log=lambda _m: None)
        _BROKER["kafka"] = f"external cluster at {settings.bootstrap}"
        yield settings
        return
    settings = Settings(data_dir=tmp_path_factory.mktemp("finops"), kafka_port=stack.free_port_pair())
    try:
        status = stack.up(settings, log=lambda _m: None)
    except stack.StackError as exc:
        pytest.exit(f"the local Kafka broker could not start: {exc}", returncode=3)
    _BROKER["kafka"] = (f"local Apache Kafka {settings.kafka_version} broker started by the test session, "
                        f"pid {status.pid} on {settings.bootstrap}")
    yield settings
    stack.down(settings, log=lambda _m: None)


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('clickhouse')}"


@pytest.fixture
def settings(kafka_settings: Settings, chdb_dsn: str) -> Settings:
    """Per test: the shared broker and chdb, with its own database and consumer groups."""
    run = uuid.uuid4().hex[:10]
    return kafka_settings.model_copy(update={
        "clickhouse_url": os.environ.get("FINOPS_TEST_CLICKHOUSE_URL") or chdb_dsn,
        "clickhouse_database": f"test_{run}",
        "group_prefix": f"test-{run}",
    })


@pytest.fixture(params=["chdb", "server"])
def clickhouse_settings(request, chdb_dsn: str) -> Settings:
    """ClickHouse only (no Kafka): the session's chdb, then a server where there is one; a new database each."""
    url = chdb_dsn if request.param == "chdb" else request.getfixturevalue("clickhouse_server_url")
    return Settings(clickhouse_url=url, clickhouse_database=database_name())


def pytest_terminal_summary(terminalreporter):
    if _BROKER:
        terminalreporter.write_line(f"integration tests ran against: {_BROKER['kafka']}")


def pytest_collection_modifyitems(items):
    """The busy-tenant test goes last: its 300,000 events (and their ledger entries) would make
    every later test that reads a whole topic of the shared broker slower."""
    items.sort(key=lambda item: item.module.__name__ == "test_busy_tenant")
