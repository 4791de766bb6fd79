"""compose.yaml and the Grafana it starts: the file is valid Compose, what it mounts exists and
agrees with the provisioning, and every dashboard query runs on the project's ClickHouse schema.

Validation uses ``docker compose config -q`` where the Docker client has the compose plugin,
otherwise the Compose specification's JSON schema as vendored by check-jsonschema. The
dashboard's queries get the data source's macros expanded as the plugin expands them
(grafana-clickhouse-datasource v4, pkg/macros) and run on chdb, and on a server where there is
one, against history with known answers (tests/report_data.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from finops.projections import clickhouse
from finops.settings import Settings
from report_data import History, noon

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "finops.yaml"
DASHBOARD = GRAFANA / "dashboards" / "finops.json"
PLUGIN = "grafana-clickhouse-datasource"

UTC = timezone.utc


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())  # SafeLoader resolves the `<<: *finops` merge keys


def services() -> dict[str, dict]:
    return load_yaml(COMPOSE)["services"]


def datasource() -> dict:
    [ds] = load_yaml(DATASOURCES)["datasources"]
    return ds


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume, short or long syntax."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        out.append((source, target))
    return out


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


# ---------------------------------------------------------------- Compose specification

def docker_compose_works() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


VALIDATOR = "docker compose config -q" if docker_compose_works() else "check-jsonschema vendor.compose-spec"


def compose_problems(path: Path) -> str | None:
    """None when ``path`` is a valid Compose file, else what the validator said."""
    if VALIDATOR.startswith("docker"):
        argv = ["docker", "compose", "-f", str(path), "config", "-q"]
    else:
        argv = [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=path.parent)
    return None if done.returncode == 0 else f"{VALIDATOR}: {done.stdout}{done.stderr}"


def test_compose_yaml_is_valid_compose():
    assert compose_problems(COMPOSE) is None


def test_the_validation_catches_a_broken_file(tmp_path):
    document = load_yaml(COMPOSE)
    same = tmp_path / "same" / "compose.yaml"
    same.parent.mkdir()
    same.write_text(yaml.safe_dump(document, sort_keys=False))
    assert compose_problems(same) is None  # the round trip through PyYAML alone changes nothing

    document["services"]["grafana"]["not_a_compose_key"] = True
    broken = tmp_path / "broken" / "compose.yaml"
    broken.parent.mkdir()
    broken.write_text(yaml.safe_dump(document, sort_keys=False))
    problems = compose_problems(broken)
    assert problems is not None and "not_a_compose_key" in problems


# ---------------------------------------------------------------- what compose mounts and wires

def test_relative_volume_sources_exist():
    # a source starting with "." is a path relative to compose.yaml; a bare name is a named volume
    relative = [(name, source) for name, service in services().items() for source, _ in mounts(service)
                if source.startswith(".")]
    assert relative, "compose.yaml mounts no directory of the repository"
    missing = [(name, source) for name, source in relative if not (ROOT / source).exists()]
    assert not missing


def test_grafana_service():
    grafana = services()["grafana"]
    assert re.fullmatch(r"grafana/grafana:12(\.\d+)*", grafana["image"])
    env = environment(grafana)
    plugins = env.get("GF_PLUGINS_PREINSTALL_SYNC", "") + "," + env.get("GF_PLUGINS_PREINSTALL", "") + "," + \
        env.get("GF_INSTALL_PLUGINS", "")
    assert PLUGIN in plugins.split(",")
    assert (env["GF_AUTH_ANONYMOUS_ENABLED"], env["GF_AUTH_ANONYMOUS_ORG_ROLE"]) == ("true", "Viewer")
    assert "3000:3000" in grafana["ports"]
    assert grafana["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    by_source = {source: target for source, target in mounts(grafana)}
    for source in ("./deploy/grafana/provisioning", "./deploy/grafana/dashboards"):
        assert f"{source}:{by_source[source]}:ro" in grafana["volumes"], f"{source} is not mounted read-only"
    # http://localhost:3000 opens the dashboard: the home dashboard is the mounted file
    home = Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent.as_posix() == by_source["./deploy/grafana/dashboards"]
    assert (GRAFANA / "dashboards" / home.name).is_file()


def test_provisioning_paths_match_the_mounts():
    by_source = {source: target for source, target in mounts(services()["grafana"])}
    assert by_source["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    [provider] = load_yaml(PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == by_source["./deploy/grafana/dashboards"]
    assert DASHBOARD.parent == ROOT / "deploy/grafana/dashboards"


def test_every_panel_uses_the_provisioned_datasource():
    ds = datasource()
    assert (ds["type"], ds["uid"]) == (PLUGIN, "finops-clickhouse")
    board = dashboard()
    refs = [("templating " + v["name"], v["datasource"]) for v in board["templating"]["list"]]
    for panel in board["panels"]:
        refs.append((panel["title"], panel["datasource"]))
        refs += [(f"{panel['title']} {t['refId']}", t["datasource"]) for t in panel["targets"]]
    assert len(refs) > len(board["panels"])
    wrong = [(where, ref) for where, ref in refs if ref != {"type": PLUGIN, "uid": ds["uid"]}]
    assert not wrong


def test_datasource_matches_the_clickhouse_service():
    ds, all_services = datasource(), services()
    server = all_services[ds["jsonData"]["host"]]
    env = environment(server)
    assert ds["jsonData"]["protocol"] == "http"
    assert f"{ds['jsonData']['port']}" in [p.split(":")[-1] for p in server["ports"]]
    assert (ds["jsonData"]["username"], ds["secureJsonData"]["password"], ds["jsonData"]["defaultDatabase"]) == (
        env["CLICKHOUSE_USER"], env["CLICKHOUSE_PASSWORD"], env["CLICKHOUSE_DB"])
    # the processors write where Grafana reads
    processors = environment(all_services["sink"])
    url = urlsplit(processors["FINOPS_CLICKHOUSE_URL"])
    assert (url.hostname, url.port, url.username, url.password) == (
        ds["jsonData"]["host"], ds["jsonData"]["port"], ds["jsonData"]["username"], ds["secureJsonData"]["password"])
    database = processors.get("FINOPS_CLICKHOUSE_DATABASE", Settings.model_fields["clickhouse_database"].default)
    assert database == ds["jsonData"]["defaultDatabase"]


def test_webhooks_run_by_default_against_the_receiver():
    all_services = services()
    webhooks, receiver = all_services["webhooks"], all_services["webhook-receiver"]
    assert "profiles" not in webhooks and "profiles" not in receiver
    assert environment(webhooks)["FINOPS_WEBHOOK_URL"] == "${FINOPS_WEBHOOK_URL:-http://webhook-receiver:8080/}"
    assert environment(webhooks)["FINOPS_WEBHOOK_SECRET"] == environment(receiver)["FINOPS_WEBHOOK_SECRET"] == \
        "${FINOPS_WEBHOOK_SECRET:-change-me}"
    assert receiver["command"] == ["alerts", "receive", "--host", "0.0.0.0", "--port", "8080"]
    assert receiver["image"] == webhooks["image"] == "finops:local"


def test_api_serves_on_8080_with_its_tokens_on_a_volume():
    all_services = services()
    api = all_services["api"]
    assert api["image"] == all_services["ledger"]["image"] == "finops:local"
    command = api["command"]
    assert command == ["serve", "--host", "0.0.0.0", "--port", "8080"]  # never --insecure-local here
    assert "8080:8080" in api["ports"]
    env = environment(api)
    # the tokens file (default <data dir>/tokens.json) lives on a named volume, not in the container
    tokens = Path(env.get("FINOPS_TOKENS_FILE") or Path(env["FINOPS_DATA_DIR"]) / "tokens.json")
    volumes = {target: source for source, target in mounts(api)}
    assert any(tokens.is_relative_to(target) and source in load_yaml(COMPOSE)["volumes"]
               for target, source in volumes.items()), (tokens, volumes)
    # it reads the same Kafka and ClickHouse as the processors
    processors = environment(all_services["ledger"])
    assert (env["FINOPS_KAFKA_BOOTSTRAP"], env["FINOPS_CLICKHOUSE_URL"]) == (
        processors["FINOPS_KAFKA_BOOTSTRAP"], processors["FINOPS_CLICKHOUSE_URL"])
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


# ---------------------------------------------------------------- the dashboard's queries

SUPPORTED = ("$__timeFilter", "$__fromTime", "$__toTime", "${tenant}")
TOKEN = re.compile(r"\$(?:\{[^}]*\}|\w+)")


def macro_problems(text: str) -> list[str]:
    """Grafana variables and data source macros in ``text`` outside the supported set."""
    problems = []
    for m in TOKEN.finditer(text):
        if m.group() not in SUPPORTED:
            problems.append(f"unsupported {m.group()!r}")
        elif m.group() == "$__timeFilter" and not text.startswith("(", m.end()):
            problems.append("$__timeFilter without (column)")
    if text.count("${tenant}") != text.count("'${tenant}'"):
        problems.append("${tenant} not inside a string literal '${tenant}'")
    return problems


def expand(sql: str, start: datetime, end: datetime, tenant: str) -> str:
    """What reaches ClickHouse: the variable interpolated, the macros as the plugin writes them."""
    problems = macro_problems(sql)
    if problems:
        raise ValueError("; ".join(problems))
    start_sql, end_sql = f"toDateTime({int(start.timestamp())})", f"toDateTime({int(end.timestamp())})"
    sql = re.sub(r"\$__timeFilter\(\s*([^()]+?)\s*\)", lambda m: f"{m[1]} >= {start_sql} AND {m[1]} <= {end_sql}",
                 sql)
    sql = sql.replace("$__fromTime", start_sql).replace("$__toTime", end_sql)
    sql = sql.replace("${tenant}", tenant.replace("\\", "\\\\").replace("'", "\\'"))
    assert "$" not in sql, sql
    return sql


def queries(board: dict) -> list[tuple[str, str]]:
    """(where, SQL) of every query of the dashboard: the template variables', then each panel target's."""
    out = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            out.append((f"variable {variable['name']}", query if isinstance(query, str) else query["rawSql"]))
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} [{target['refId']}]", target["rawSql"]))
    return out


def test_only_supported_macros_in_the_dashboard():
    text = DASHBOARD.read_text()
    assert macro_problems(text) == []
    assert len(queries(dashboard())) >= 6


@pytest.mark.parametrize("sql", [
    "SELECT 1 WHERE $__timeFilter_ms(ts)",
    "SELECT $__interval_s",
    "SELECT 1 WHERE $__dateFilter(day)",
    "SELECT 1 WHERE tenant_id = '$tenant'",
    "SELECT 1 WHERE tenant_id IN (${tenant:singlequote})",
    "SELECT 1 WHERE tenant_id = ${tenant}",
    "SELECT 1 WHERE $__timeFilter AND 1",
])
def test_an_unsupported_macro_fails(sql):
    with pytest.raises(ValueError):
        expand(sql, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), "t")


def test_expansion_is_the_plugins():
    start, end = datetime(2026, 10, 16, tzinfo=UTC), datetime(2026, 11, 14, 23, 59, 59, tzinfo=UTC)
    assert expand("SELECT 1 FROM t WHERE $__timeFilter(ts) AND d <= toDate($__toTime) AND x = '${tenant}'",
                  start, end, "acme") == (
        "SELECT 1 FROM t WHERE ts >= toDateTime(1792108800) AND ts <= toDateTime(1794700799) "
        "AND d <= toDate(toDateTime(1794700799)) AND x = 'acme'")


TENANT = "dash"
TO = date(2026, 11, 14)
START = datetime(2026, 10, 16, tzinfo=UTC)  # a 30-day range ending TO (UTC), as the time picker sends it
END = datetime(2026, 11, 14, 23, 59, 59, tzinfo=UTC)


def seed(client) -> None:
    """a spends 10 a day (team search, gpt-4o), b 1 a day (ads, claude), since Oct 1; balances
    root 1000, a 200 then 55 on TO, b 100 on TO; an alert firing on a, one resolved on b; traffic."""
    (History(TENANT)
     .daily(date(2026, 10, 1), TO, "a", 10, team="search", model="gpt-4o")
     .daily(date(2026, 10, 1), TO, "b", 1, team="ads", model="claude")
     .balance(TENANT, 1000, noon(date(2026, 10, 1))).balance("a", 200, noon(date(2026, 10, 1)))
     .balance("a", 55, noon(TO)).balance("b", 100, noon(TO))
     .alert("a", noon(TO - timedelta(days=2)), severity="critical", threshold=90, used=450, allocation=500)
     .alert("b", noon(TO - timedelta(days=5)), severity="warning", threshold=70, used=35, allocation=50)
     .alert("b", noon(TO - timedelta(days=4)), severity="info", status="resolved", threshold=70)
     .usage(noon(TO - timedelta(days=1)), "a", requests=20, latency_ms=100)
     .usage(noon(TO - timedelta(days=1)), "a", latency_ms=900, error="rate_limited")
     .usage(noon(TO), "b", requests=3, latency_ms=None)
     .write(client))


@pytest.fixture
def seeded(clickhouse_settings):
    client = clickhouse.connect(clickhouse_settings)
    seed(client)
    return client


def run_all(client) -> dict[str, list[dict]]:
    results = {}
    for where, sql in queries(dashboard()):
        result = client.query(expand(sql, START, END, TENANT))
        results[where] = [dict(zip(result.column_names, row)) for row in result.result_rows]
    return results


def test_every_dashboard_query_runs_and_returns_rows(seeded):
    failed, empty = {}, []
    for where, sql in queries(dashboard()):
        try:
            rows = seeded.query(expand(sql, START, END, TENANT)).result_rows
        except Exception as exc:  # report every query that fails, not only the first
            failed[where] = clickhouse.first_line(exc)
            continue
        if not rows:
            empty.append(where)
    assert not failed
    assert not empty


def test_the_panels_show_the_known_answers(seeded):
    r = run_all(seeded)
    assert TENANT in [row["tenant_id"] for row in r["variable tenant"]]
    assert r["Spend in range (credits) [A]"] == [{"spend": 330}]  # 30 days x 11
    [forecast] = r["Month-end spend forecast (credits) [A]"]  # as TestConstantBurn: 14 x 11 + 16 x 11
    assert (forecast["month_to_date"], forecast["days_left"], forecast["forecast_month_end"]) == (154, 16, 330)
    assert r["Available credits [A]"] == [{"available": 1155}]
    assert r["Firing alerts [A]"] == [{"firing": 1}]

    teams = {}
    for row in r["Spend by team (credits per day) [A]"]:
        teams[row["team"]] = teams.get(row["team"], 0) + row["credits"]
    assert teams == {"search": 300, "ads": 30}

    burn = r["Burn-down and forecast (available credits) [A]"]
    assert len(burn) == 30 and burn[0]["available"] == 1200 and burn[-1]["available"] == 1155
    line = r["Burn-down and forecast (available credits) [B]"]  # from TO to Nov 30 at 11 a day
    assert [row["forecast"] for row in line] == [1155 - 11 * n for n in range(17)]
    assert line[0]["time"].date() == TO and burn[-1]["time"] == line[0]["time"]

    assert r["Top models (credits) [A]"] == [{"model": "gpt-4o", "credits": 300}, {"model": "claude", "credits": 30}]
    traffic = {row["time"].date(): row for row in r["Requests and p95 latency [A]"]}
    day = traffic[TO - timedelta(days=1)]
    assert (day["requests"], day["errors"]) == (21, 1) and 100 <= day["p95_latency_ms"] <= 900
    assert traffic[TO]["p95_latency_ms"] is None  # no latency reported that day

    runway = {row["account"]: row for row in r["Runway by account [A]"]}
    assert (runway["a"]["runway_days"], runway["b"]["runway_days"], runway[TENANT]["runway_days"]) == (5.5, 100, None)
    alerts = r["Alerts [A]"]
    assert [(a["account"], a["status"]) for a in alerts] == [("a", "firing"), ("b", "resolved"), ("b", "firing")]
    assert set(alerts[0]) >= {"ts", "tenant", "account", "type", "severity", "status"}
