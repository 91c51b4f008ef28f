"""The soak script runs end to end in local mode: a real `serve`, mixed uploads, kill -9 and
restart. Small counts and a short run: this checks the script, not the figures it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_soak_local_mode(small_cache: Path, tmp_path: Path) -> None:
    from classifier.training import train

    head = train(small_cache, tmp_path / "head", head="logreg")
    cmd = [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--head", str(head),
           "--clients", "4", "--seconds", "12", "--kill-at", "3", "--max-requests", "400",
           "--recovery-timeout", "240"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    seen = {(o["status"], o["code"]) for o in result["outcomes"]}
    assert {("200", "-"), ("422", "invalid_image"), ("413", "image_too_large")} <= seen, seen
    assert result["kill"]["recovery_s"] > 0, result["kill"]
    assert result["peak_rss_mib"] > 100
    assert "errors by kind" in proc.stdout and "/ready 200 again" in proc.stdout


def test_soak_v2_mode(small_cache: Path, tmp_path: Path) -> None:
    """--v2: good requests alone, then beside abusive ones; every abusive one is refused with
    a 4xx (or 503 when the bytes in flight are full), none is a 500."""
    from classifier.training import train

    head = train(small_cache, tmp_path / "head", head="logreg")
    cmd = [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--v2", "--head", str(head),
           "--good-clients", "1", "--abuse-clients", "3", "--unloaded-seconds", "4",
           "--seconds", "12", "--body-timeout-s", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    outcomes = {(o["phase"], o["kind"], o["status"]) for o in result["outcomes"]}
    assert ("unloaded", "good", "200") in outcomes and ("loaded", "good", "200") in outcomes
    abusive = {(kind, status) for phase, kind, status in outcomes if kind != "good"}
    assert {status for _, status in abusive} <= {"400", "404", "408", "413", "503"}, abusive
    assert len({kind for kind, _ in abusive}) >= 3, abusive
    assert result["status_500"] == 0
    assert result["good_latency_s"]["unloaded"]["p99"] > 0
    assert result["peak_rss_mib"]["after_loaded"] > 100
    assert "p99 loaded / unloaded" in proc.stdout
