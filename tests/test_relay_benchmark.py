"""benchmarks/relay.py: its summary is the median of the rounds, and a quick run measures every
path end to end (imagegate with one and two processes, labelling on)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "relay.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("relay_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


relay = _load()


def _round(direct_ms: float, gateway_ms: float, direct_rps: float, gateway_rps: float,
           peak_mib: float) -> dict[str, Any]:
    latency = {"direct": [direct_ms] * 98 + [direct_ms + 10] * 2,
               "imagegate": [gateway_ms] * 98 + [gateway_ms + 30] * 2}
    return {"latency_ms": {"identity": latency, "gzip": latency},
            "rps": {"direct": direct_rps, "imagegate": gateway_rps},
            "memory": {"imagegate": {"peak": peak_mib * 2**20, "ok": 500}}}


def test_summary_is_the_median_of_the_rounds() -> None:
    rounds = [_round(10, 14, 200, 100, 300), _round(12, 22, 100, 80, 500),
              _round(11, 14, 220, 88, 350)]
    summary = relay.summarise(rounds)
    gateway = summary["median"]["imagegate"]
    assert gateway["added_p50_identity"] == 4  # rounds: +4, +10, +3
    assert gateway["added_p99_gzip"] == 24  # p99s: 44-20, 52-22, 44-21
    assert gateway["rps"] == 88
    assert gateway["rps_ratio"] == 0.5  # 0.5, 0.8, 0.4
    assert gateway["peak_mib"] == 350
    assert summary["range"]["imagegate"]["added_p50_identity"] == (3, 10)
    assert summary["median"]["direct"]["rps"] == 200


@pytest.mark.e2e
def test_quick_run_measures_every_path(tmp_path: Path) -> None:
    raw = tmp_path / "raw.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--no-unshare", "--no-litellm",
                           "--json", str(raw)], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| imagegate, 1 process | imagegate, 2 processes |" in done.stdout
    assert "Accept-Encoding: gzip" in done.stdout
    result = json.loads(raw.read_text())
    assert result["summary"]["implicit_labels"] == {"imagegate": 1, "imagegate-2": 1}
    (one,) = result["rounds"]
    for encoding in ("identity", "gzip"):
        assert {name: len(samples) for name, samples in one["latency_ms"][encoding].items()} == {
            "direct": 10, "imagegate": 10, "imagegate-2": 10}
    assert set(one["rps"]) == {"direct", "imagegate", "imagegate-2"}
    for kind in ("imagegate", "imagegate-2"):
        burst = one["memory"][kind]
        assert burst["statuses"] == {"200": 40}  # all in flight at once, none told to wait
        assert burst["ok"] == 40
        assert burst["peak"] >= burst["before"] > 0
