#!/usr/bin/env python3
"""A/B runs of this runtime's FAQ endpoints: variants side by side, interleaved, with the floor.

For changes to the request path: each variant is `scoring serve` with its own environment (SCORING_*
settings) or its own source tree (PYTHONPATH of another checkout), all pinned to the same CPU, measured
in turns by wrk on the other CPU, repeated; medians and spread per point, with server CPU µs/request.

    python bench/ab.py --variant base=PYTHONPATH=/path/to/old/checkout --variant new= --clients 1,16,64
    python bench/ab.py --variant nobatch=SCORING_MAX_BATCH_SIZE=1 --variant batch= --endpoint v2
    python bench/ab.py --variant a= --variant b=SCORING_MAX_BATCH_DELAY_MS=1 --clients 16 --rates 200,800

A variant is `name=` (the current code, defaults) or `name=VAR=value[,VAR=value...]`. Results print as
a table (and as JSON with --json). `--rates` adds open-loop points (vegeta at fixed arrival rates, as in
bench/run.py): what closed-loop clients cannot show, latency when requests do not wait for answers.
Holds /tmp/bench.lock while measuring, like bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import peers
import run
from loadgen import closed_loop, open_loop, vegeta_targets, wrk_script


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition("=")
    env: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        env[key] = value
    return name, env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", required=True, help="name=VAR=value,... (repeatable)")
    p.add_argument("--clients", default="1,16,64")
    p.add_argument("--rates", default="", help="open-loop arrival rates, requests/s (comma-separated; needs vegeta)")
    p.add_argument("--endpoint", default="score,v2", help="score, v2 or both (comma-separated)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--no-floor", action="store_true")
    p.add_argument("--json", type=Path, help="also write every measurement here")
    args = p.parse_args(argv)
    server_cpus, client_cpus = run.cpu_split()
    tools = run.tools()
    wrk, vegeta = tools["wrk"], tools["vegeta"]
    assert wrk is not None
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    if rates and vegeta is None:
        p.error("--rates needs vegeta (hack/bench-tools.sh builds it)")
    registry = run.WORK / "registry"
    if not (registry / run.FAQ_NAME).is_dir():
        run.run_cli(sys.executable, str(run.REPO / "examples" / "faq-matching" / "train.py"), "--registry",
                    str(registry))
    model_dir = run.fetch(registry, run.FAQ_NAME, run.WORK / "models" / run.FAQ_NAME)
    calls = run.faq_calls(run.faq_questions(), 3)
    scripts = run.WORK / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    endpoints = [e.strip() for e in args.endpoint.split(",") if e.strip()]
    started: list[peers.Server] = []
    targets: dict[str, tuple[peers.Server, Path]] = {}
    vts: dict[str, Path] = {}
    raw: list[dict[str, Any]] = []
    with run.bench_lock():
        try:
            for text in args.variant:
                name, env = parse_variant(text)
                srv = peers.start_ours(f"ab-{name}", model_dir, server_cpus, {"SCORING_WORKERS": "1", **env})
                started.append(srv)
                srv.wait_ready(180)
                for ep in endpoints:
                    targets[f"{name} /{ep}"] = (srv, wrk_script(calls[ep], scripts / f"ab-{ep}.lua"))
                    vts[f"{name} /{ep}"] = vegeta_targets(srv.url, calls[ep], scripts / f"ab-{name}-{ep}.vt")
            if not args.no_floor:
                canned = run.WORK / "floor-response.json"
                canned.write_bytes(run.post(started[0].url, calls["score"][0]))
                floor = peers.start_floor(server_cpus, canned)
                started.append(floor)
                floor.wait_ready(60)
                targets["floor"] = (floor, wrk_script(calls["score"], scripts / "ab-score.lua"))
                vts["floor"] = vegeta_targets(floor.url, calls["score"], scripts / "ab-floor.vt")
            for name, (srv, script) in targets.items():  # warm-up, not counted
                with peers.alone(srv, started):
                    closed_loop(wrk, srv.url, script, target=name, connections=8, duration_s=1,
                                client_cpus=client_cpus)
            order = list(targets)
            for rep in range(args.repeats):
                for c in [int(x) for x in args.clients.split(",")]:
                    for name in order:
                        srv, script = targets[name]
                        with peers.alone(srv, started):  # the others paused (see peers.Server.pause)
                            r = run.closed_loop_point(wrk, srv, script, target=name, connections=c,
                                                      duration_s=args.duration, client_cpus=client_cpus,
                                                      batches=name != "floor")
                        r["repeat"] = rep
                        raw.append(r)
                        order = order[1:] + order[:1]
                for rate in rates:
                    assert vegeta is not None  # --rates without vegeta is refused above
                    for name in order:
                        srv, _script = targets[name]
                        with peers.alone(srv, started):
                            before = run.scrape_batches(srv.url) if name != "floor" else None
                            r = run.show(open_loop(vegeta, vts[name], target=name, rate=rate,
                                                   duration_s=args.duration, client_cpus=client_cpus,
                                                   server_pid=srv.pid)).as_dict()
                            after = run.scrape_batches(srv.url) if before is not None else None
                        if before is not None and after is not None:
                            calls_n = after[1] - before[1]
                            r["mean_batch"] = round((after[0] - before[0]) / calls_n, 3) if calls_n else 1.0
                        r["repeat"] = rep
                        raw.append(r)
                        order = order[1:] + order[:1]
        finally:
            for srv in started:
                srv.stop()
    rows = run.aggregate(raw)
    print(f"{'target':<22} {'load':>6} {'req/s':>8} {'spread':>7} {'p50 ms':>7} {'p99 ms':>7} {'cpu µs/req':>10} "
          f"{'batch':>5}")
    for r in sorted(rows, key=lambda r: (r["mode"], r["concurrency"] or r["rate"], r["target"])):
        load = f"c={r['concurrency']}" if r["mode"] == "closed" else f"r={r['rate']:g}"
        print(f"{r['target']:<22} {load:>6} {r['throughput_rps']:>8.0f} {r['spread_pct']:>6.0f}% "
              f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['server_cpu_us_per_req'] or 0:>10.0f} "
              f"{r.get('mean_batch', 0):>5.1f}")
    if args.json:
        args.json.write_text(json.dumps({"raw": raw, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
