"""The docs run as written: every fenced block of README.md and docs/*.md is executed, the
way a new user would, against a fresh local broker and data dir started by the docs
themselves (`finops stack up`).

- ``sh``/``bash``: one bash script per file, blocks in order (`set -eo pipefail`), in a
  scratch directory that links to the repo's files, with `.venv/bin` on PATH;
- ``python``: run with the project's Python, in that script's order;
- ``sql``: run with `finops sql` in that order (after README and the quickstart filled the history);
- ``json``: must parse (one document or JSON Lines); a wire-v1 message type must decode;
- ``yaml``: must parse; ``text``, ``console`` output and unlabeled blocks are not run.
A block that cannot run here says why on the line before it:
``<!-- docs-check: skip: <reason> -->``. Files run in order: README, quickstart, then the
rest by name, so later docs can query what the quickstart published.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from finops import stack
from finops.integrations.settings import LiteLLMSettings
from finops.schemas import wire
from finops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "quickstart.md",
        *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "quickstart.md")]
RUN = {"sh", "bash", "python", "sql"}
CHECK = {"json", "jsonl", "yaml"}
NOT_RUN = {"text", "console", ""}
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
SKIP = re.compile(r"<!--\s*docs-check:\s*skip:\s*(?P<reason>.+?)\s*-->")
FILE_TIMEOUT_S = 600

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = len(match.group("indent")), match.group("lang").lower()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line[indent:] for line in lines[i + 1:end]) + "\n"
        skip = SKIP.search(lines[i - 1]) if i > 0 else None
        found.append(Block(path, i + 1, lang, body, skip.group("reason") if skip else None))
        i = end + 1
    return found


def test_every_block_has_a_known_kind():
    unknown = [f"{b.where} ```{b.lang}" for p in DOCS for b in blocks(p) if b.lang not in RUN | CHECK | NOT_RUN]
    assert not unknown, f"blocks this check cannot run (use sh, python, sql, json, yaml or text): {unknown}"


def test_few_blocks_are_skipped_and_each_says_why():
    every = [b for p in DOCS for b in blocks(p) if b.lang in RUN]
    skipped = [b for b in every if b.skip]
    assert all(len(b.skip) > 10 for b in skipped), [b.where for b in skipped]
    assert len(skipped) <= len(every) // 5, [f"{b.where}: {b.skip}" for b in skipped]


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_data_blocks_parse(path):
    import yaml

    for b in blocks(path):
        if b.skip or b.lang not in CHECK:
            continue
        if b.lang == "yaml":
            yaml.safe_load(b.text)
            continue
        try:
            docs = [json.loads(b.text)]
        except ValueError:
            docs = [json.loads(line) for line in b.text.splitlines() if line.strip()]  # JSON Lines
        for doc in docs:
            if isinstance(doc, dict) and doc.get("type") in wire.MESSAGE_TYPES:
                decoded = wire.decode(json.dumps(doc))
                assert not isinstance(decoded, wire.Rejection), f"{b.where}: {decoded.reason}: {decoded.detail}"


def script(path: Path) -> str:
    """The file's runnable blocks as one bash script; each block announces its line first."""
    parts = ["set -eo pipefail"]
    for b in blocks(path):
        if b.skip or b.lang not in RUN:
            continue
        parts.append(f"echo '>>> {b.where} ({b.lang})' >&2")
        if b.lang in ("sh", "bash"):
            parts.append(b.text)
        elif b.lang == "python":
            parts.append(f"python - <<'FINOPS_DOCS_PY'\n{b.text}FINOPS_DOCS_PY")
        else:
            parts.append(f"finops sql {shlex.quote(b.text.strip())}")
    return "\n".join(parts) + "\n"


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory):
    """A new user's machine: a scratch dir with the repo's files, no FINOPS_* but a free port and a data dir."""
    up_to_date = subprocess.run(["make", "-q", "install"], cwd=ROOT, capture_output=True)
    assert up_to_date.returncode == 0, ("the venv is older than pyproject.toml: run `make install` first (the docs' "
                                        "`make` commands would reinstall it from the scratch dir)")
    work = tmp_path_factory.mktemp("docs")
    for entry in ROOT.iterdir():
        if entry.name not in (".git", ".pytest_cache", ".hypothesis") and not entry.name.endswith("-data"):
            (work / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINOPS_")}
    settings = Settings()
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "FINOPS_DATA_DIR": str(work / "data"),
        "FINOPS_KAFKA_PORT": str(stack.free_port_pair()),
        "FINOPS_CACHE_DIR": os.environ.get("FINOPS_CACHE_DIR", str(settings.cache_dir)),  # the jars, fetched once
        "COLUMNS": "160",
    })
    yield work, env
    subprocess.run([sys.executable, "-m", "finops.cli", "stack", "down"], env=env, cwd=work, capture_output=True,
                   timeout=120)


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_runnable_blocks_run_as_written(path, docs_env):
    work, env = docs_env
    text = script(path)
    if text.count("\n") <= 1:
        pytest.skip(f"{path.name} has no runnable block")
    log = work / f"{path.stem}.log"
    with log.open("w") as output:
        proc = subprocess.Popen(["bash", "-c", text], cwd=work, env=env, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(FILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            try:  # whatever a block left running in the background
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    tail = log.read_text()[-4000:]
    assert rc == 0, f"{path.name}: a block failed (exit {rc}); the last block started is the last '>>>' line:\n{tail}"


# ----------------------------------------------------------------------------- the reference pages


def test_configuration_reference_lists_every_setting_and_nothing_else():
    text = (ROOT / "docs" / "configuration.md").read_text()
    expected = {f"FINOPS_{name.upper()}" for name in Settings.model_fields}
    documented = set(re.findall(r"FINOPS_[A-Z0-9_]+", text))
    assert expected <= documented, f"settings missing from docs/configuration.md: {sorted(expected - documented)}"
    litellm = {f"FINOPS_LITELLM_{name.upper()}" for name in LiteLLMSettings.model_fields}
    in_integrations = set(re.findall(r"FINOPS_LITELLM_[A-Z0-9_]+", (ROOT / "docs" / "integrations.md").read_text()))
    assert litellm <= in_integrations, f"settings missing from docs/integrations.md: {sorted(litellm - in_integrations)}"
    everywhere = set()
    for path in DOCS:
        everywhere |= set(re.findall(r"FINOPS_[A-Z0-9_]+", path.read_text()))
    test_only = {"FINOPS_TEST_CLICKHOUSE_URL"}
    assert everywhere - expected - litellm - test_only == set(), "docs name settings that do not exist"


def test_every_command_has_help_with_an_example():
    import typer.main

    from finops.cli import app

    group = typer.main.get_command(app)

    def leaves(command, prefix=()):
        subs = getattr(command, "commands", None)
        if not subs:
            yield prefix, command
            return
        for name, sub in subs.items():
            yield from leaves(sub, (*prefix, name))

    missing = [" ".join(name) for name, command in leaves(group) if "Example" not in (command.help or "")]
    assert not missing, f"commands whose --help has no example: {missing}"
