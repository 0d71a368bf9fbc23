"""The benchmark's own arithmetic (bench/run.py, bench/loadgen.py): aggregation of repeats, the
model's cost per row at a fractional batch size, the overhead-vs-floor analysis and target checks,
and the wrk script generator. Measurements themselves need the compiled tools and a quiet machine:
they run in `make bench`, not here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import run  # noqa: E402


def _raw(target: str, c: int, rps: float, p50: float, p99: float, cpu: float = 0.5, **kw: Any) -> dict[str, Any]:
    return {"target": target, "mode": "closed", "concurrency": c, "rate": 0.0, "throughput_rps": rps,
            "rows_per_s": rps, "p50_ms": p50, "p90_ms": p50, "p99_ms": p99, "errors": 0, "client_cpu": 0.05,
            "server_cpu": cpu, **kw}


def test_aggregate_takes_medians_and_reports_the_spread() -> None:
    rows = run.aggregate([_raw("a", 16, 100, 5, 9), _raw("a", 16, 120, 4, 8), _raw("a", 16, 80, 6, 30)])
    (r,) = rows
    assert r["repeats"] == 3 and r["throughput_rps"] == 100 and r["p99_ms"] == 9
    assert r["throughput_min"] == 80 and r["throughput_max"] == 120 and r["spread_pct"] == 40.0
    assert r["server_cpu_us_per_req"] == pytest.approx(1e6 * 0.5 / 100, rel=0.01)


def test_cost_per_row_interpolates_between_measured_batch_sizes() -> None:
    limit = {"1": 500.0, "2": 800.0, "4": 1000.0}
    assert run.cost_per_row_s(limit, 1) == pytest.approx(1 / 500)
    assert run.cost_per_row_s(limit, 3) == pytest.approx((1 / 800 + 1 / 1000) / 2)
    assert run.cost_per_row_s(limit, 100) == pytest.approx(1 / 1000)  # beyond the largest: its cost


def _section(ours_rps: float, peer_rps: float, ours_p99: float, peer_p99: float) -> dict[str, Any]:
    raw = [
        _raw("floor", 16, 10_000, 1.5, 3, cpu=0.5),
        _raw("this-runtime /score", 16, ours_rps, 8, ours_p99, cpu=0.9, mean_batch=16),
        _raw("mlserver /v2", 16, peer_rps, 20, peer_p99),
        _raw("this-runtime /score", 1, 400, 2.2, 3, cpu=0.9, mean_batch=1),
        _raw("floor", 1, 5_000, 0.2, 0.5, cpu=0.5),
    ]
    return {"order": ["floor", "this-runtime /score", "mlserver /v2"], "results": run.aggregate(raw),
            "limit": {"by_batch": {"1": 500.0, "16": 2000.0}, "by_batch_cpu": {"1": 500.0, "16": 2000.0},
                      "batch_1_latency_ms": 2.0}}


def test_analysis_checks_the_targets_both_ways() -> None:
    good = {t["target"].split(":")[0] + t["target"][-12:]: t["met"]
            for t in run.faq_analysis(_section(1500, 500, 20, 50))["targets"]}
    assert all(good.values()), good
    bad = run.faq_analysis(_section(900, 500, 80, 50))["targets"]
    peer = next(t for t in bad if "best peer" in t["target"])
    assert not peer["met"] and peer["value"].startswith("1.80x")


def test_overhead_is_wall_time_minus_the_model_at_the_achieved_batch() -> None:
    an = run.faq_analysis(_section(1500, 500, 20, 50))
    row = next(r for r in an["overhead"] if r["concurrency"] == 16)
    assert row["model_us_per_row"] == pytest.approx(500.0)  # 1 / 2000 rows/s at batch 16
    assert row["overhead_us"] == pytest.approx(1e6 / 1500 - 500, abs=0.1)
    assert row["overhead_vs_floor"] == pytest.approx((1e6 / 1500 - 500) / 100, abs=0.01)


def test_wrk_script_escapes_every_byte(tmp_path: Path) -> None:
    body = b'{"q": "a \\"quoted\\" line\nwith \xc3\xa9 and \x00"}'
    script = loadgen.wrk_script([loadgen.Call("/score", body)], tmp_path / "s.lua").read_text()
    assert "\\123\\34\\113\\34" in script  # {"q" as decimal escapes, nothing raw that Lua could misread
    assert "WRKJSON" in script and 'wrk.format("POST"' in script
    decoded = bytes(int(x) for x in script.split("\n")[2].split(", ")[2].strip('"},').split("\\")[1:])
    assert decoded == body


def test_the_path_is_the_server_cpu_minus_its_own_measured_model_time() -> None:
    sec = _section(1500, 500, 20, 50)
    raw = [
        _raw("floor", 16, 10_000, 1.5, 3, cpu=0.5),  # 50 µs CPU per request
        _raw("this-runtime /score", 16, 1500, 8, 20, cpu=0.9, mean_batch=16, model_us_per_req=450.0),
        _raw("this-runtime /score", 16, 1500, 8, 20, cpu=0.9, mean_batch=16, model_us_per_req=470.0),
        _raw("this-runtime /score", 1, 400, 2.5, 3, cpu=0.9, mean_batch=1, model_us_per_req=2100.0),
        _raw("this-runtime /score", 1, 400, 2.5, 3, cpu=0.9, mean_batch=1, model_us_per_req=2100.0),
        _raw("floor", 1, 5_000, 0.2, 0.5, cpu=0.5),
    ]
    sec["results"] = run.aggregate(raw)
    an = run.faq_analysis(sec)
    # under load the model thread's wall time includes the loop's turns: no split there
    assert "served_model_us_per_req" not in next(r for r in an["overhead"] if r["concurrency"] == 16)
    row = next(r for r in an["overhead"] if r["concurrency"] == 1)
    assert row["served_model_us_per_req"] == 2100.0
    assert row["path_cpu_us"] == pytest.approx(1e6 * 0.9 / 400 - 2100, abs=0.1)
    assert row["path_vs_floor"] == pytest.approx((1e6 * 0.9 / 400 - 2100) / 100, abs=0.01)  # floor: 0.5 / 5,000
    one = next(t for t in an["targets"] if t["target"].startswith("1 client"))
    assert "its model call in the server took 2.10 ms" in one["value"] and not one["met"]  # 2.5 > 2.0 + 0.3
