"""A file mixing good lines with many kinds of bad ones: every bad line is refused with its
own reason, every good line is applied, nothing crashes (reliability.md row 11)."""

from __future__ import annotations

import json
import subprocess
import sys

from ledger_helpers import c

from bad_lines import BAD, GOOD


def mixed_file(tmp_path):
    lines = GOOD[:3] + [b for b, _ in BAD[:10]] + GOOD[3:] + [b for b, _ in BAD[10:]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", errors="surrogateescape") + b"\n")
    return path


def test_every_bad_line_is_refused_with_its_reason_and_every_good_line_applies(tmp_path):
    assert len({reason for _, reason in BAD}) >= 20
    out = subprocess.run([sys.executable, "-m", "finops.cli", "fold", str(mixed_file(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    result = json.loads(out.stdout)
    # in input order, but for usage held for an account that never opened: rejected when the input ends
    held = [reason for _, reason in BAD if reason == "unknown_account" and '"type":"usage"' in _]
    assert [r["reason"] for r in result["rejected"]] == [
        reason for line, reason in BAD if not (reason == "unknown_account" and '"type":"usage"' in line)] + held
    accounts = result["accounts"]
    assert accounts["acme/acme"]["available"] == "59.5"
    assert accounts["acme/team"] == {"available": "40", "consumed": "0.5", "reserved": "0", "overage": "0"}
    assert accounts["globex/globex"]["available"] == "7"
    assert result["totals"]["purchased"] == "107"
    assert c(result["totals"]["consumed"]) == c("0.5")
