#!/usr/bin/env python3
"""What shadow traffic costs the stable runtime: the FAQ runtime copying 0% vs 100% of its requests.

    python bench/shadow.py [--seconds 8] [--rounds 3] [--out bench/results]   (holds /tmp/bench.lock itself)

The *stable* `scoring serve` of the FAQ model (pinned to the first half of the CPUs) and a shadow
(the other half, with the load generators): by default the bench's floor app (a bare ASGI app
answering canned bytes, so the copies add no model work to this small machine: what is measured is
the stable runtime's own cost, as when the shadow runs on other nodes), or with `--shadow runtime`
a second `scoring serve` of the same model. The stable runtime reads its
shadow target from a config file (SCORING_SHADOW_CONFIG_FILE), so one warm process is measured in
both modes, alternating `off, on, off, on, ...` (percent 0, then 100: every request copied):

- **closed loop** (`wrk`, 8 connections): the most the stable runtime answers per second; the ratio
  on/off is the CPU the copies cost it (serialising nothing: the bytes it already has are re-sent);
- **open loop** (`vegeta`, a fixed rate at half the off-mode throughput): the p99 latency the
  clients see with and without copies, which is what the issue bounds (< 10% rise).

The shadow shares the machine (its CPUs are the load generators'), so `on` is measured under more
contention than `off`: the ratios are conservative. The load generators' own CPU use is
recorded to show they were not the bottleneck. Results: `OUT/shadow.{json,md}` (`--shadow floor`) or
`OUT/shadow-runtime.{json,md}` (`--shadow runtime`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
from loadgen import LoadResult, closed_loop, open_loop, vegeta_targets, wrk_script  # noqa: E402
from run import (  # noqa: E402
    bench_lock,
    cpu_split,
    faq_calls,
    faq_model_dir,
    faq_questions,
    tools,
)


def log(msg: str) -> None:
    print(f"[shadow {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def counts(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    out = {"sent": 0.0, "failed": 0.0, "dropped": 0.0}
    for m in re.finditer(r'^scoring_shadow_requests_total\{outcome="(\w+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    out["percent"] = float(re.search(r"^scoring_shadow_percent (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return out


def switch(config: Path, stable_url: str, shadow_url: str | None) -> None:
    """Point the stable runtime at the shadow (or nowhere) and wait until it says so in its metrics."""
    doc = {"url": shadow_url, "percent": 100} if shadow_url else {}
    tmp = config.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, config)
    want = 100.0 if shadow_url else 0.0
    deadline = time.monotonic() + 15
    while counts(stable_url)["percent"] != want:
        if time.monotonic() > deadline:
            raise RuntimeError("the stable runtime did not pick the shadow config up")
        time.sleep(0.2)


def summary(results: list[LoadResult]) -> dict[str, float]:
    return {
        "throughput_rps": statistics.median(r.throughput_rps for r in results),
        "p50_ms": statistics.median(r.p50_ms for r in results),
        "p99_ms": statistics.median(r.p99_ms for r in results),
        "errors": sum(r.errors for r in results),
        "client_cpu": max(r.client_cpu for r in results),
        "server_cpu": statistics.median(r.server_cpu for r in results),
        # the stable runtime's CPU time per answered request: the copies' cost, least sensitive to noise
        "server_cpu_us_per_request": statistics.median(
            r.server_cpu * r.duration_s / max(r.requests, 1) * 1e6 for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="off/on pairs per load mode")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--shadow", choices=("floor", "runtime"), default="floor",
                    help="floor: a bare ASGI app answering canned bytes (the stable runtime's own cost, as when the "
                         "shadow runs on other nodes); runtime: a second `scoring serve` on this machine")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    found = tools()
    wrk, vegeta = found["wrk"], found["vegeta"]
    assert wrk is not None
    server_cpus, client_cpus = cpu_split()
    model_dir = faq_model_dir()
    calls = faq_calls(faq_questions(), 3)["score"]
    scripts = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    config = scripts / "shadow.json"
    config.write_text("{}")
    if args.shadow == "floor":
        canned = scripts / "response.json"
        canned.write_bytes(b'{"question": "q", "matches": [{"id": 101, "question": "q", "answer": "a", "score": 0.9}],'
                           b' "no_match": false}')
        shadow = peers.start_floor(client_cpus, canned)
    else:
        shadow = peers.start_ours("shadow", model_dir, client_cpus, {"SCORING_WORKERS": "1"})
    stable = peers.start_ours("stable", model_dir, server_cpus, {
        "SCORING_WORKERS": "1", "SCORING_SHADOW_CONFIG_FILE": str(config), "SCORING_SHADOW_MAX_IN_FLIGHT": "64"})
    rows: dict[str, dict[str, list[LoadResult]]] = {"closed": {"off": [], "on": []}, "open": {"off": [], "on": []}}
    try:
        shadow.wait_ready(120)
        stable.wait_ready(120)
        script = wrk_script(calls, scripts / "faq.lua")
        targets = vegeta_targets(stable.url, calls, scripts / "faq.targets")
        with bench_lock():
            log(f"warm-up; stable on CPUs {server_cpus}, shadow + load generators on {client_cpus}")
            closed_loop(wrk, stable.url, script, target="warmup", connections=args.connections, duration_s=3)
            before = counts(stable.url)
            for mode in ("off", "on") * args.rounds:
                switch(config, stable.url, shadow.url if mode == "on" else None)
                r = closed_loop(wrk, stable.url, script, target=f"stable-{mode}", connections=args.connections,
                                duration_s=args.seconds, client_cpus=client_cpus, server_pid=stable.pid)
                rows["closed"][mode].append(r)
                log(f"closed {mode:3}: {r.throughput_rps:7.1f} req/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms"
                    f"  errors {r.errors}  client cpu {r.client_cpu:.2f}")
            rate = round(0.5 * summary(rows["closed"]["off"])["throughput_rps"])
            if vegeta is not None:
                for mode in ("off", "on") * args.rounds:
                    switch(config, stable.url, shadow.url if mode == "on" else None)
                    r = open_loop(vegeta, targets, target=f"stable-{mode}", rate=rate, duration_s=args.seconds,
                                  client_cpus=client_cpus, server_pid=stable.pid)
                    rows["open"][mode].append(r)
                    log(f"open {mode:3} @ {rate}/s: p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  errors {r.errors}"
                        f"  client cpu {r.client_cpu:.2f}")
            switch(config, stable.url, None)
            after = counts(stable.url)
    finally:
        stable.stop()
        shadow.stop()
    copies = {k: after[k] - before[k] for k in ("sent", "failed", "dropped")}
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared": True,
                    "note": "2-CPU VM shared with other work while measuring; stable pinned to one half of the "
                            "CPUs, the shadow and the load generators to the other"},
        "shadow": args.shadow, "seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
        "open_rate": rate,
        "copies": copies,
        "closed": {m: summary(v) for m, v in rows["closed"].items()},
        "open": {m: summary(v) for m, v in rows["open"].items() if v},
        "raw": {k: {m: [vars(r) for r in v] for m, v in d.items()} for k, d in rows.items()},
    }
    c, o = result["closed"], result["open"]
    result["ratios"] = {"closed_throughput_on_over_off": c["on"]["throughput_rps"] / c["off"]["throughput_rps"],
                        "closed_p99_on_over_off": c["on"]["p99_ms"] / c["off"]["p99_ms"],
                        "closed_cpu_per_request_on_over_off": c["on"]["server_cpu_us_per_request"]
                        / c["off"]["server_cpu_us_per_request"]}
    if o:
        result["ratios"]["open_p99_on_over_off"] = o["on"]["p99_ms"] / o["off"]["p99_ms"]
        result["ratios"]["open_p50_on_over_off"] = o["on"]["p50_ms"] / o["off"]["p50_ms"]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "shadow" if args.shadow == "floor" else "shadow-runtime"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    c, o, q = r["closed"], r["open"], r["ratios"]
    lines = [
        "# Shadow traffic: what copying every request costs the stable FAQ runtime",
        "",
        f"{r['date']}; `python bench/shadow.py --seconds {r['seconds']:g} --rounds {r['rounds']} "
        f"--shadow {r['shadow']}`; "
        f"{r['machine']['note']}. Medians of {r['rounds']} alternating rounds per mode.",
        "",
        "| load | mode | req/s | p50 ms | p99 ms | errors | stable CPU µs/request | load-generator CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, d in (("closed, wrk c=" + str(r["connections"]), c), (f"open, vegeta {r['open_rate']}/s", o)):
        for mode in ("off", "on"):
            if mode in d:
                s = d[mode]
                lines.append(f"| {name} | {'100% copied' if mode == 'on' else 'no shadow'} | "
                             f"{s['throughput_rps']:.1f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['errors']} | "
                             f"{s['server_cpu_us_per_request']:.0f} | {s['client_cpu']:.2f} |")
    lines += ["", "Ratios (with copies / without):", ""]
    lines += [f"- {k}: **{v:.3f}**" for k, v in q.items()]
    cp = r["copies"]
    lines += ["", f"Copies during the run: sent {cp['sent']:.0f}, failed {cp['failed']:.0f}, "
              f"dropped {cp['dropped']:.0f} (max in flight 64).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
