#!/usr/bin/env python3
"""Side-by-side benchmark of the scoring runtime: one command, results in bench/results/.

    make bench                     # python bench/run.py: the full run, ~10 minutes on 2 CPUs
    make bench-quick               # python bench/run.py --quick: fewer, shorter points, ~4 minutes
    python bench/gpu.py            # ResNet-152 on a GPU (fp32/fp16 batch sweep), see that script

Sections:
- faq: the FAQ matcher (scikit-learn) served by this runtime (/score and V2) and by its peers,
  MLServer, KServe's Python model server, LitServe (V2 or /score-shaped, each at its documented
  best for this workload) and the Azure ML inference server, all calling the same model through
  the flavour's public interface on the same model file with the same questions (answers
  checked identical); a FLOOR row (a bare ASGI app on the same uvicorn stack answering canned
  bytes); and the in-process limit at batch sizes 1..16.
- resnet: ResNet-152 image classification (JPEG bytes in) served by this runtime with adaptive
  batching off and on, plus the in-process limit of the model alone.

Load comes from compiled generators (bench/loadgen.py): `wrk` for closed-loop points (1/4/16/64
connections), `vegeta` for open-loop points (fixed arrival rates); their own CPU use is recorded
for every point. In the FAQ section the servers are pinned to one CPU and the load generator to the
other; every point is repeated, the servers take turns (order rotating), and the spread is reported.
Measurements hold /tmp/bench.lock (other benchmarks on the machine wait; so does this one).
See docs/benchmarks.md for how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import peers
import quiet
import report
from loadgen import (
    Call,
    LoadResult,
    closed_loop,
    find_tool,
    open_loop,
    tree_cpu_seconds,
    vegeta_targets,
    wrk_script,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
FAQ_NAME = "faq-matcher"
IMG_NAME = "image-classifier"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- machine
def machine_info(device: str) -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cpus": len(os.sched_getaffinity(0)),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        **({"note": f"**Quiet**: this run held the team's exclusive lock (`flock -x {quiet.QUIET_LOCK}`): no "
                    "other benchmark, build or test that follows the team's lock rule ran at the same time"}
           if quiet.held_exclusively() else {}),
    }


def versions() -> dict[str, str]:
    return {d: peers.version(d) for d in ("scoring-operator", "scikit-learn", "skops", "numpy", "torch",
                                          "torchvision", "starlette", "uvicorn", "uvloop", "httptools")}


def cpu_split() -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, load-generator CPUs): half and half on >= 2 CPUs, else no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def run_cli(*args: str) -> str:
    res = subprocess.run(list(args), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} ... failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res.stdout


def faq_model_dir() -> Path:
    """The FAQ model fetched from the bench's own registry, trained and registered there the first time."""
    registry = WORK / "registry"
    if not (registry / FAQ_NAME).is_dir():
        log("training and registering the FAQ model (examples/faq-matching/train.py)")
        run_cli(sys.executable, str(REPO / "examples" / "faq-matching" / "train.py"), "--registry", str(registry))
    return fetch(registry, FAQ_NAME, WORK / "models" / FAQ_NAME)


def fetch(registry: Path, name: str, dest: Path) -> Path:
    """`scoring fetch` the latest version into a fresh directory, as a scoring pod's init container does."""
    shutil.rmtree(dest, ignore_errors=True)
    run_cli(shutil.which("scoring") or "scoring", "fetch", "--registry", str(registry), "--name", name, "--dest",
            str(dest))
    return dest


def show(r: LoadResult) -> LoadResult:
    point = f"c={r.concurrency:<3}" if r.mode == "closed" else f"rate={r.rate:<5g}"
    log(f"  {r.target:<20} {point} {r.rows_per_s:8.1f} rows/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  "
        f"errors {r.errors}  cpu client {r.client_cpu:4.2f} server {r.server_cpu:4.2f}")
    return r


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """Hold /tmp/bench.lock (BENCH_LOCK) while measuring: two benchmarks never overlap on the machine."""
    path = os.environ.get("BENCH_LOCK", "/tmp/bench.lock")
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for {path} (another benchmark is measuring)")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def tools() -> dict[str, str | None]:
    """The compiled load generators; `make bench` installs them (hack/bench-tools.sh)."""
    found = {"wrk": find_tool("wrk"), "vegeta": find_tool("vegeta")}
    if found["wrk"] is None:
        raise SystemExit("bench: wrk not found. Install it (Debian: apt-get install wrk) or run `make bench`, "
                         "which runs hack/bench-tools.sh to install wrk and build vegeta.")
    return found


# ---------------------------------------------------------------------------------------- FAQ
def faq_questions() -> list[str]:
    path = REPO / "examples" / "faq-matching" / "data" / "duplicates.jsonl"
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def faq_calls(questions: list[str], top_k: int) -> dict[str, list[Call]]:
    # min_score 0: the whole top-k ranking comes back (not only matches above the model's no-match
    # threshold), so the same-work check compares rankings, and every answer has k entries to render
    score = [Call("/score", orjson.dumps({"question": q, "top_k": top_k, "min_score": 0})) for q in questions]
    v2 = [
        Call(f"/v2/models/{FAQ_NAME}/infer", orjson.dumps({
            "inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": [q]}],
            "parameters": {"top_k": top_k, "min_score": 0},
        }))
        for q in questions
    ]
    return {"score": score, "v2": v2, "litserve": [Call("/predict", c.body) for c in score]}


def _top_ids(body: bytes) -> list[str]:
    doc = orjson.loads(body)
    if "outputs" in doc:
        out = {o["name"]: o for o in doc["outputs"]}
        return [str(x) for x in out["id"]["data"]]
    return [str(m["id"]) for m in doc["matches"]]


def post(url: str, call: Call) -> bytes:
    req = urllib.request.Request(url + call.path, data=call.body, headers={"Content-Type": call.content_type})
    with urllib.request.urlopen(req, timeout=30) as r:
        body: bytes = r.read()
        return body


def agreement(servers: dict[str, tuple[peers.Server, list[Call]]], n: int = 8) -> str:
    """Send the same questions to every server; the top-k ids must be identical (same work)."""
    answers = {name: [_top_ids(post(srv.url, call)) for call in calls[:n]] for name, (srv, calls) in servers.items()}
    first = next(iter(answers.values()))
    differ = [name for name, a in answers.items() if a != first]
    if differ:
        raise RuntimeError(f"the servers disagree on the top-k answers ({', '.join(differ)}): {answers}")
    return f"identical top-{len(first[0])} ids from all {len(answers)} servers for {n} questions"


def in_fresh_process(fn: str, cpus: set[int] | None = None, env: dict[str, str] | None = None,
                     **kwargs: Any) -> dict[str, Any]:
    """Run `fn(**kwargs)` of this module (or `module:fn` of another bench module) in a new Python process
    (pinned to `cpus`) and return its dict.

    The limits are measured like a server runs: alone in a fresh process. In this process the other
    sections have loaded scikit-learn/scipy, whose OpenMP/BLAS runtimes next to PyTorch's libgomp
    slow PyTorch down (pytorch/pytorch#98836), which would understate the limit.
    """
    module, _, name = fn.rpartition(":")  # "gpu:gpu_limit" runs bench/gpu.py's gpu_limit
    module = module or "run"
    code = f"import json, sys, {module}; print(json.dumps({module}.{name}(**json.loads(sys.argv[1]))))"

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    res = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], cwd=HERE, capture_output=True,
                         text=True, env={**os.environ, **(env or {})}, preexec_fn=pin, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"{fn} failed:\n{res.stderr[-3000:]}")
    for line in res.stderr.splitlines():
        if line.startswith("[bench"):
            print(line, file=sys.stderr, flush=True)
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def faq_limit(model_dir: str, questions: list[str], top_k: int, sizes: list[int], seconds: float) -> dict[str, Any]:
    """The FAQ scorer called in-process (parse, predict, render): rows/s at each batch size in `sizes`."""
    from scoring_runtime.flavours import load_scorer
    from scoring_runtime.settings import RuntimeSettings

    scorer = load_scorer(RuntimeSettings(model_dir=Path(model_dir)))
    scorer.warmup()
    out: dict[str, float] = {}
    out_cpu: dict[str, float] = {}
    for size in sizes:
        # a batch as the server forms it: `size` one-question jobs, one predict call, one render each
        bodies = [orjson.dumps({"question": q, "top_k": top_k, "min_score": 0}) for q in questions]
        best = best_cpu = 0.0
        for _ in range(3):  # best of three slices: the machine is shared
            rows, t0, c0, i = 0, time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - t0 < seconds / 3:
                jobs = [scorer.parse_score(bodies[(i + j) % len(bodies)], "application/json") for j in range(size)]
                for job, res in zip(jobs, scorer.predict(jobs), strict=True):
                    orjson.dumps(scorer.render_score(res, job), option=orjson.OPT_SERIALIZE_NUMPY)
                rows += size
                i += size
            best = max(best, rows / (time.perf_counter() - t0))
            best_cpu = max(best_cpu, rows / max(time.process_time() - c0, 1e-9))
        out[str(size)] = best
        # rows per CPU-second: what the model costs in CPU time, which waiting for a busy core does not inflate
        out_cpu[str(size)] = best_cpu
    median_1 = batch_1_median_ms(scorer, top_k, questions, seconds)
    log("  in-process limit (rows/s by batch size): " + ", ".join(f"{k}: {v:.0f}" for k, v in out.items())
        + "; per CPU-second: " + ", ".join(f"{k}: {v:.0f}" for k, v in out_cpu.items())
        + f"; batch-1 median {median_1:.3f} ms")
    return {"by_batch": out, "by_batch_cpu": out_cpu, "batch_1_median_ms": median_1}


def batch_1_median_ms(scorer: Any, top_k: int, questions: list[str], seconds: float) -> float:
    """Median ms of one question's parse + predict + render, calls back to back (the best case: nothing runs
    between two calls, so the model's data stays in the CPU's caches; a served request never gets that)."""
    bodies = [orjson.dumps({"question": q, "top_k": top_k, "min_score": 0}) for q in questions]
    times: list[float] = []
    t_end = time.perf_counter() + seconds / 2
    while time.perf_counter() < t_end or len(times) < 50:
        body = bodies[len(times) % len(bodies)]
        t0 = time.perf_counter()
        job = scorer.parse_score(body, "application/json")
        (res,) = scorer.predict([job])
        orjson.dumps(scorer.render_score(res, job), option=orjson.OPT_SERIALIZE_NUMPY)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def cost_per_row_s(limit: dict[str, float], batch: float) -> float:
    """In-process seconds per row at a (fractional) batch size, interpolated between measured sizes."""
    pts = sorted((int(k), 1.0 / v) for k, v in limit.items())
    if batch <= pts[0][0]:
        return pts[0][1]
    for (b0, c0), (b1, c1) in itertools.pairwise(pts):
        if batch <= b1:
            return c0 + (c1 - c0) * (batch - b0) / (b1 - b0)
    return pts[-1][1]


def scrape_batches(url: str) -> tuple[float, float, float]:
    """(sum of rows, number of model calls, seconds in model calls) from the runtime's scoring_batch_rows
    and scoring_batch_seconds histograms."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return 0.0, 0.0, 0.0
    total = count = secs = 0.0
    for line in text.splitlines():
        if line.startswith("scoring_batch_rows_sum"):
            total = float(line.split()[-1])
        elif line.startswith("scoring_batch_rows_count"):
            count = float(line.split()[-1])
        elif line.startswith("scoring_batch_seconds_sum"):
            secs = float(line.split()[-1])
    return total, count, secs


def closed_loop_point(wrk: str, srv: peers.Server, script: Path, *, target: str, connections: int, duration_s: float,
                      client_cpus: set[int] | None, batches: bool, timeout_s: float = 10.0) -> dict[str, Any]:
    """One closed-loop point against a started server, shown and as a dict; with `batches` (this runtime)
    also the mean batch and the model's own time per request, from its /metrics before and after."""
    before = scrape_batches(srv.url) if batches else None
    r = show(closed_loop(wrk, srv.url, script, target=target, connections=connections, duration_s=duration_s,
                         client_cpus=client_cpus, server_pid=srv.pid, timeout_s=timeout_s)).as_dict()
    if before is not None:
        after = scrape_batches(srv.url)
        calls_n = after[1] - before[1]
        r["mean_batch"] = round((after[0] - before[0]) / calls_n, 3) if calls_n else 1.0
        answered = r["throughput_rps"] * r["duration_s"]
        if answered and after[2] > before[2]:  # the model's own time in this server, per request
            r["model_us_per_req"] = round(1e6 * (after[2] - before[2]) / answered, 1)
    return r


def aggregate(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (target, mode, point): medians over the repeats, plus the throughput spread."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in raw:
        groups.setdefault((r["target"], r["mode"], r["concurrency"] or r["rate"]), []).append(r)
    out = []
    for (target, mode, _point), rs in groups.items():
        tp = [r["throughput_rps"] for r in rs]
        med = statistics.median(tp)
        row = {
            "target": target, "mode": mode, "concurrency": rs[0]["concurrency"], "rate": rs[0]["rate"],
            "repeats": len(rs),
            "throughput_rps": round(med, 2),
            "rows_per_s": round(statistics.median(r["rows_per_s"] for r in rs), 2),
            "throughput_min": round(min(tp), 2), "throughput_max": round(max(tp), 2),
            "spread_pct": round(100 * (max(tp) - min(tp)) / med, 1) if med else None,
            "p50_ms": round(statistics.median(r["p50_ms"] for r in rs), 3),
            "p90_ms": round(statistics.median(r["p90_ms"] for r in rs), 3),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in rs), 3),
            "errors": sum(r["errors"] for r in rs),
            "client_cpu_max": round(max(r["client_cpu"] for r in rs), 3),
            "server_cpu": round(statistics.median(r["server_cpu"] for r in rs), 3),
            # server CPU time per request: robust to other work on a shared machine (it counts only
            # the CPU the server got, not the time it waited for a core)
            "server_cpu_us_per_req": round(statistics.median(
                1e6 * r["server_cpu"] / r["throughput_rps"] for r in rs if r["throughput_rps"]), 1)
            if any(r["throughput_rps"] for r in rs) else None,
        }
        batch = [r["mean_batch"] for r in rs if r.get("mean_batch")]
        if batch:
            row["mean_batch"] = round(statistics.median(batch), 2)
        model = [r["model_us_per_req"] for r in rs if r.get("model_us_per_req")]
        if model:
            row["model_us_per_req"] = round(statistics.median(model), 1)
        out.append(row)
    return out


def section_faq(args: argparse.Namespace, failures: dict[str, str], tools_: dict[str, str | None]) -> dict[str, Any]:
    server_cpus, client_cpus = cpu_split()
    model_dir = faq_model_dir()
    questions = faq_questions()
    calls = faq_calls(questions, args.top_k)
    batch = args.faq_batch
    # this runtime at its defaults except the worker count (one CPU): the FAQ flavour batches by default
    ours_env = {"SCORING_WORKERS": "1"}
    peer_names = [] if args.no_peers else [p for p in peers.PEERS if p in args.peers]
    if peer_names:
        try:
            args.peer_versions = peers.ensure_venvs(log, peer_names)
        except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
            failures["faq"] = f"peers unavailable: {e}"
            log(f"peers unavailable, benchmarking this runtime alone: {e}")
            peer_names = []
    limit_args = {"model_dir": str(model_dir), "questions": questions, "top_k": args.top_k,
                  "sizes": [1, 2, 4, 8, 16, 32], "seconds": args.limit_seconds}
    targets: dict[str, tuple[peers.Server, list[Call]]] = {}
    started: list[peers.Server] = []
    raw: list[dict[str, Any]] = []
    wrk, vegeta = tools_["wrk"], tools_["vegeta"]
    assert wrk is not None
    scripts = WORK / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    with bench_lock():
        limit_before = in_fresh_process("faq_limit", server_cpus, **limit_args)
        try:
            log(f"starting servers: this runtime, floor, {', '.join(peer_names) or 'no peers'}")
            ours = peers.start_ours("this-runtime", model_dir, server_cpus, ours_env)
            started.append(ours)
            ours.wait_ready(180)
            canned = WORK / "floor-response.json"
            canned.write_bytes(post(ours.url, calls["score"][0]))
            floor = peers.start_floor(server_cpus, canned)
            started.append(floor)
            floor.wait_ready(60)  # (with --no-peers nothing else gives it time to start)
            targets["floor"] = (floor, calls["score"])
            targets["this-runtime /score"] = (ours, calls["score"])
            targets["this-runtime /v2"] = (ours, calls["v2"])
            starters = {
                "mlserver": lambda: ("mlserver /v2", peers.start_mlserver(
                    model_dir, FAQ_NAME, server_cpus, batch, args.faq_delay_ms / 1000), calls["v2"]),
                "kserve": lambda: ("kserve /v2", peers.start_kserve(model_dir, FAQ_NAME, server_cpus), calls["v2"]),
                "litserve": lambda: ("litserve /predict", peers.start_litserve(
                    model_dir, server_cpus, batch, args.faq_delay_ms / 1000), calls["litserve"]),
                "amlserver": lambda: ("aml-server /score", peers.start_amlserver(model_dir, server_cpus),
                                      calls["score"]),
            }
            for name in peer_names:  # one at a time: loading is CPU heavy and they share one CPU
                label, srv, cl = starters[name]()
                started.append(srv)
                try:
                    srv.wait_ready(240)
                except RuntimeError as e:
                    failures[f"faq {label}"] = str(e)[-2000:]
                    log(f"{label} did not start, left out: {str(e)[:300]}")
                    srv.stop()
                    continue
                targets[label] = (srv, cl)
            same = agreement({k: v for k, v in targets.items() if k != "floor"})
            log(same)
            wrk_scripts = {name: wrk_script(cl, scripts / f"{name.replace(' ', '_').replace('/', '')}.lua")
                           for name, (_srv, cl) in targets.items()}
            for name, (srv, _cl) in targets.items():  # a discarded first run: every server starts equally warm
                with peers.alone(srv, started):
                    closed_loop(wrk, srv.url, wrk_scripts[name], target=name, connections=8, duration_s=1.0,
                                client_cpus=client_cpus)
            order = list(targets)
            for rep in range(args.repeats):
                for c in args.concurrency:
                    for name in order:  # every point runs all targets back to back: drift hits them alike
                        srv, _cl = targets[name]
                        with peers.alone(srv, started):  # the others paused: the CPU is the measured one's
                            r = closed_loop_point(wrk, srv, wrk_scripts[name], target=name, connections=c,
                                                  duration_s=args.duration, client_cpus=client_cpus,
                                                  batches=name.startswith("this-runtime"))
                        r["repeat"] = rep
                        raw.append(r)
                        order = order[1:] + order[:1]  # and who goes first rotates
            if vegeta is None:
                failures["faq open loop"] = "vegeta not found (hack/bench-tools.sh builds it): open-loop points skipped"
            else:
                vt = {name: vegeta_targets(srv.url, cl, scripts / f"{name.replace(' ', '_').replace('/', '')}.vt")
                      for name, (srv, cl) in targets.items()}
                for rep in range(args.open_repeats):
                    for rate in args.rates:
                        for name in order:
                            srv, _cl = targets[name]
                            with peers.alone(srv, started):
                                r = show(open_loop(vegeta, vt[name], target=name, rate=rate,
                                                   duration_s=args.duration, client_cpus=client_cpus,
                                                   server_pid=srv.pid)).as_dict()
                            r["repeat"] = rep
                            raw.append(r)
                            order = order[1:] + order[:1]
        finally:
            for srv in started:
                srv.stop()
        limit_after = in_fresh_process("faq_limit", server_cpus, **limit_args)
    # the machine is shared: keep the better of the two limit measurements at each batch size
    by_batch = {k: max(v, limit_after["by_batch"][k]) for k, v in limit_before["by_batch"].items()}
    by_cpu = {k: max(v, limit_after["by_batch_cpu"][k]) for k, v in limit_before["by_batch_cpu"].items()}
    results = aggregate(raw)
    return {
        "title": "FAQ matcher (scikit-learn): this runtime vs its peers vs the floor",
        "short_title": "FAQ matcher",
        "setup": (
            f"One question per request, top_k={args.top_k}, min_score 0 (the whole ranking), {len(questions)} "
            "distinct questions in rotation. "
            f"Closed loop: wrk, 1 thread, {'/'.join(map(str, args.concurrency))} connections, {args.duration:g} s "
            f"per point; open loop: vegeta at {'/'.join(f'{r:g}' for r in args.rates)} requests/s, "
            f"{args.duration:g} s per point. Each point {args.repeats}x (open loop {args.open_repeats}x), servers "
            f"taking turns in rotating order; medians reported, spread = (max-min)/median of throughput. Servers "
            f"pinned to CPUs {sorted(server_cpus) if server_cpus else 'all'}, load generator to "
            f"{sorted(client_cpus) if client_cpus else 'all'}. This runtime: `scoring serve` with its defaults, "
            f"1 worker (the FAQ flavour batches by default: max_batch_size {args.ours_batch}, delay "
            f"{args.ours_delay_ms:g} ms). Floor: bench/floor_app.py, a bare ASGI app on the same uvicorn "
            f"settings (uvloop, httptools, 1 worker) answering the runtime's /score response as canned bytes. "
            f"MLServer: custom runtime, parallel_workers=1, adaptive batching {batch} rows / "
            f"{args.faq_delay_ms:g} ms. KServe: kserve.Model with V2 REST, 1 worker, no batching (KServe batches "
            f"in a Go sidecar, not in its Python server). LitServe: LitAPI max_batch_size={batch}, batch_timeout="
            f"{args.faq_delay_ms:g} ms, 1 CPU worker, fast_queue. Azure ML inference server: score.py, 1 worker "
            "(it has no batching). Every peer calls the model through the flavour's public interface "
            "(bench/peer_apps/faq_work.py)."
        ),
        "unit": "questions",
        "order": list(targets),
        "results": results,
        "raw": raw,
        "limit": {"by_batch": {k: round(v, 1) for k, v in by_batch.items()},
                  "by_batch_cpu": {k: round(v, 1) for k, v in by_cpu.items()},
                  "batch_1_latency_ms": round(1000 / by_batch["1"], 3),
                  "batch_1_median_ms": round(min(x["batch_1_median_ms"] for x in (limit_before, limit_after)), 3),
                  "description": "parse + predict + render in one process, pinned like the servers; best of the "
                                 "measurements before and after the servers"},
        "agreement": same,
    }


def faq_analysis(sec: dict[str, Any]) -> dict[str, Any]:
    """The runtime's overhead against the floor and the model, and the issue's targets, from one run."""
    res = [r for r in sec["results"] if r["mode"] == "closed"]
    by = {(r["target"], r["concurrency"]): r for r in res}
    limit = {k: float(v) for k, v in sec["limit"]["by_batch"].items()}
    limit_cpu = {k: float(v) for k, v in sec["limit"].get("by_batch_cpu", sec["limit"]["by_batch"]).items()}
    peers_ = [t for t in sec["order"] if not t.startswith("this-runtime") and t != "floor"]
    out: dict[str, Any] = {"overhead": [], "targets": []}
    for (target, c), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if not target.startswith("this-runtime") or ("floor", c) not in by or not r.get("mean_batch"):
            continue  # the model's share needs the batch size the server formed
        floor = by[("floor", c)]
        b = float(r["mean_batch"])
        model_us = 1e6 * cost_per_row_s(limit, b)
        wall_us = 1e6 / r["throughput_rps"]
        floor_us = 1e6 / floor["throughput_rps"]
        row = {"target": target, "concurrency": c, "mean_batch": round(b, 2), "wall_us_per_req": round(wall_us, 1),
               "model_us_per_row": round(model_us, 1), "overhead_us": round(wall_us - model_us, 1),
               "floor_us_per_req": round(floor_us, 1), "overhead_vs_floor": round((wall_us - model_us) / floor_us, 2)}
        if r.get("server_cpu_us_per_req") and floor.get("server_cpu_us_per_req"):
            model_cpu_us = 1e6 * cost_per_row_s(limit_cpu, b)
            cpu_over = r["server_cpu_us_per_req"] - model_cpu_us
            row |= {"cpu_us_per_req": r["server_cpu_us_per_req"], "model_cpu_us_per_row": round(model_cpu_us, 1),
                    "cpu_overhead_us": round(cpu_over, 1),
                    "floor_cpu_us_per_req": floor["server_cpu_us_per_req"],
                    "cpu_overhead_vs_floor": round(cpu_over / floor["server_cpu_us_per_req"], 2)}
            if r.get("model_us_per_req") and c == 1:
                # measured inside the server: its model calls' time per request; the rest of its CPU is the path.
                # Only at one client: the lone request's model call runs on the event loop, so its wall time is
                # its CPU time; under load the model thread shares the core with the loop, and the wall time of
                # a model call includes the loop's turns (it can exceed the server's CPU per request)
                path = r["server_cpu_us_per_req"] - r["model_us_per_req"]
                row |= {"served_model_us_per_req": r["model_us_per_req"], "path_cpu_us": round(path, 1),
                        "path_vs_floor": round(path / floor["server_cpu_us_per_req"], 2)}
        out["overhead"].append(row)
    t = out["targets"]
    for c in (16, 64):
        for ours in ("this-runtime /v2", "this-runtime /score"):
            o = by.get((ours, c))
            cand = [by[(p, c)] for p in peers_ if (p, c) in by]
            if not o or not cand:
                continue
            best = max(cand, key=lambda r: r["throughput_rps"])
            ratio = o["throughput_rps"] / best["throughput_rps"]
            t.append({"target": f"{c} clients, {ours}: throughput >= 2x the best peer ({best['target']}), lower p99",
                      "value": f"{ratio:.2f}x, p99 {o['p99_ms']:.1f} vs {best['p99_ms']:.1f} ms",
                      "met": ratio >= 2 and o["p99_ms"] < best["p99_ms"]})
    for row in out["overhead"]:
        if row["concurrency"] in (16, 64):
            v = row.get("cpu_overhead_vs_floor", row["overhead_vs_floor"])
            t.append({"target": f"{row['concurrency']} clients, {row['target']}: per-request overhead <= 2x floor",
                      "value": f"{row['overhead_vs_floor']:.2f}x by throughput, "
                               f"{row.get('cpu_overhead_vs_floor', float('nan')):.2f}x by server CPU time",
                      "met": v <= 2})
    lat1 = sec["limit"]["batch_1_latency_ms"]
    for ours in ("this-runtime /score", "this-runtime /v2"):
        if (o := by.get((ours, 1))) is not None:
            # the served request's own model call, measured in the server: what the request path adds on top
            model = (f"; its model call in the server took {o['model_us_per_req'] / 1000:.2f} ms"
                     if o.get("model_us_per_req") else "")
            t.append({"target": f"1 client, {ours}: median <= in-process batch-1 latency ({lat1:.2f} ms) + 0.3 ms",
                      "value": f"{o['p50_ms']:.2f} ms ({o['p50_ms'] - lat1:+.2f} ms{model})",
                      "met": o["p50_ms"] <= lat1 + 0.3})
        if (o := by.get((ours, 16))) is not None:
            t.append({"target": f"16 clients, {ours}: p99 <= 3x p50", "value": f"{o['p99_ms'] / o['p50_ms']:.2f}x",
                      "met": o["p99_ms"] <= 3 * o["p50_ms"]})
    return out


# ---------------------------------------------------------------------------------------- ResNet
def test_images(n: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        h, w = 480, 640
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        arr = np.stack([127 + 120 * np.sin(x / (9 + i) + y / 17), 127 + 120 * np.cos(y / (11 + i)),
                        255 * (x + y) / (w + h)], axis=-1) + rng.normal(0, 8, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _resnet_scorer(model_dir: str, batch: int) -> Any:
    from scoring_runtime.flavours import load_scorer
    from scoring_runtime.flavours.torch_vision import ImageClassifier
    from scoring_runtime.settings import RuntimeSettings

    # the device and thread settings come from SCORING_* in the environment (see in_fresh_process)
    scorer = load_scorer(RuntimeSettings(model_dir=Path(model_dir), max_batch_size=batch))
    assert isinstance(scorer, ImageClassifier)
    scorer.warmup()
    return scorer


def _measure_limit(scorer: Any, sizes: list[int], seconds: float) -> dict[int, tuple[float, float]]:
    """{batch size: (images per wall second, images per CPU second of this process)}, `seconds` each."""
    out = {}
    for size in sizes:
        x = np.random.default_rng(1).normal(size=(size, *scorer.pre.shape)).astype(np.float32)
        scorer.infer(x, 5)  # a size seen for the first time builds its kernels: not counted
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds or n == 0:
            scorer.infer(x, 5)
            n += size
        out[size] = (n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9))
    return out


def resnet_limit_worker(model_dir: str, batch: int) -> None:
    """Serve limit measurements over stdin/stdout (one JSON line each way) from one loaded, warm model."""
    scorer = _resnet_scorer(model_dir, batch)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        res = _measure_limit(scorer, req["sizes"], req["seconds"])
        print(json.dumps({str(k): v for k, v in res.items()}), flush=True)


class LimitWorker:
    """A fresh process (like a server: no scikit-learn/scipy loaded next to PyTorch) holding the model warm,
    asked for the in-process limit right before and after every served point, so each served number is
    divided by a limit measured seconds away from it (the machine's speed drifts, see docs/benchmarks.md)."""

    def __init__(self, model_dir: Path, batch: int, env: dict[str, str]) -> None:
        code = f"import run; run.resnet_limit_worker({str(model_dir)!r}, {batch})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
        self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the limit worker exited ({self.proc.wait()})")
        out: dict[str, Any] = json.loads(line)
        return out

    def measure(self, sizes: list[int], seconds: float) -> dict[str, Any]:
        """{"by_batch": {size: images/s}, "by_batch_cpu": {size: images/CPU-s}, "other_cpu": cores used by
        everything else on the machine meanwhile}."""
        assert self.proc.stdin is not None
        with busy_cores() as busy:
            cpu0 = tree_cpu_seconds(self.proc.pid)
            self.proc.stdin.write(json.dumps({"sizes": sizes, "seconds": seconds}) + "\n")
            self.proc.stdin.flush()
            res = self._read()
            own = tree_cpu_seconds(self.proc.pid) - cpu0
        return {"by_batch": {k: round(v[0], 3) for k, v in res.items()},
                "by_batch_cpu": {k: round(v[1], 3) for k, v in res.items()},
                "other_cpu": round(max(0.0, busy.cores - own / busy.wall), 3)}

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class _Busy:
    cores = 0.0  # CPUs busy on the whole machine, on average over the block
    wall = 0.0


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (idle and iowait count as not busy)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


@contextlib.contextmanager
def busy_cores() -> Iterator[_Busy]:
    """How many CPUs the whole machine kept busy during the block (`.cores`), and its wall time (`.wall`)."""
    out = _Busy()
    b0, t0, w0 = *_cpu_ticks(), time.perf_counter()
    yield out
    b1, t1 = _cpu_ticks()
    out.wall = time.perf_counter() - w0
    out.cores = len(os.sched_getaffinity(0)) * (b1 - b0) / max(1, t1 - t0)


def section_resnet(args: argparse.Namespace, failures: dict[str, str], tools_: dict[str, str | None]) -> dict[str, Any]:
    registry = WORK / "registry"
    marker = registry / f".{IMG_NAME}-{args.arch}"
    if not marker.exists():
        log(f"registering {args.arch} (random weights; examples/image-classification/register.py)")
        run_cli(sys.executable, str(REPO / "examples" / "image-classification" / "register.py"),
                "--registry", str(registry), "--name", IMG_NAME, "--arch", args.arch)
        marker.touch()
    model_dir = fetch(registry, IMG_NAME, WORK / "models" / IMG_NAME)
    calls = [Call("/score", img, "image/jpeg") for img in test_images(4)]
    wrk = tools_["wrk"]
    assert wrk is not None
    (WORK / "scripts").mkdir(parents=True, exist_ok=True)  # a resnet-only run has not made it yet
    script = wrk_script(calls, WORK / "scripts" / "resnet.lua")
    from scoring_runtime.flavours.torch_vision import CPU_BATCHING

    batch = args.img_batch or CPU_BATCHING.max_batch_size
    delay_ms = args.img_delay_ms if args.img_delay_ms >= 0 else CPU_BATCHING.max_batch_delay_ms
    on: dict[str, str] = {}  # by default the flavour's CPU default: what a ScoringModel without tuning gets
    if args.img_batch:
        on["SCORING_MAX_BATCH_SIZE"] = str(batch)
    if args.img_delay_ms >= 0:
        on["SCORING_MAX_BATCH_DELAY_MS"] = f"{delay_ms:g}"
    variants = {"batching off": {"SCORING_MAX_BATCH_SIZE": "1"},
                "batching on (default)" if not on else f"batching on ({batch}, {delay_ms:g} ms)": on}
    # the same thread settings for the servers and the in-process limit: every CPU, pinned explicitly
    threads = str(len(os.sched_getaffinity(0)))
    torch_env = {"SCORING_DEVICE": "cpu", "SCORING_TORCH_THREADS": threads}
    sizes = sorted({1, 2, batch})
    raw: list[dict[str, Any]] = []
    limits: list[dict[str, Any]] = []
    servers: dict[str, peers.Server] = {}
    worker: LimitWorker | None = None
    with bench_lock():
        try:
            for name, env in variants.items():
                log(f"starting this runtime ({args.arch}, {name})")
                servers[name] = peers.start_ours(f"resnet-{name.split()[1]}", model_dir, None,
                                                 {**torch_env, **env, "SCORING_WORKERS": "1"})
                servers[name].wait_ready(600)  # one at a time: loading and warming up are CPU heavy
            worker = LimitWorker(model_dir, batch, torch_env)
            for name, srv in servers.items():  # warm-up (every batch size the batcher may form), not counted
                closed_loop(wrk, srv.url, script, target=name, connections=batch, duration_s=3, timeout_s=60)
            sweep = worker.measure([1, 2, 4, 8], args.img_limit_seconds)
            log("  in-process limit sweep (images/s by batch size): "
                + ", ".join(f"{k}: {v:.2f}" for k, v in sweep["by_batch"].items()))

            def limit() -> dict[str, Any]:
                assert worker is not None
                lim = worker.measure(sizes, args.img_limit_seconds)
                log("  in-process limit (images/s by batch size): "
                    + ", ".join(f"{k}: {v:.2f}" for k, v in lim["by_batch"].items())
                    + f"; other work on the machine: {lim['other_cpu']:.2f} CPUs")
                limits.append(lim)
                return lim

            # Both servers and the limit worker stay up (idle, they cost nothing) and take turns: limit, point,
            # limit, point, ...; each point is divided by the mean of the limits measured right before and after.
            order = list(variants)
            before = limit()
            for rnd in range(args.img_rounds):
                for c in args.img_concurrency:
                    for name in order:
                        srv = servers[name]
                        with busy_cores() as busy:
                            r = closed_loop_point(wrk, srv, script, target=name, connections=c,
                                                  duration_s=args.img_seconds, client_cpus=None, batches=True,
                                                  timeout_s=60)
                        after = limit()
                        best = [max(lim["by_batch"].values()) for lim in (before, after)]
                        best_cpu = [max(lim["by_batch_cpu"].values()) for lim in (before, after)]
                        r |= {"repeat": rnd, "round_limit": round(statistics.mean(best), 3),
                              "limit_ratio": round(r["rows_per_s"] / statistics.mean(best), 4),
                              # images per server CPU-second against images per CPU-second in-process: what the
                              # serving costs in CPU beyond the model, which other work on the machine hardly moves
                              "cpu_ratio": round(r["rows_per_s"] / max(r["server_cpu"], 1e-9)
                                                 / statistics.mean(best_cpu), 4),
                              "other_cpu": round(max(0.0, busy.cores - r["server_cpu"] - r["client_cpu"]), 3),
                              "limit_other_cpu": max(before["other_cpu"], after["other_cpu"])}
                        raw.append(r)
                        before = after
                    order.reverse()
        finally:
            if worker is not None:
                worker.stop()
            for srv in servers.values():
                srv.stop()
    results = aggregate(raw)
    for row in results:  # served / limit per point: median and range over the rounds
        rs = [r for r in raw if r["target"] == row["target"] and r["concurrency"] == row["concurrency"]]
        ratios = [r["limit_ratio"] for r in rs]
        row |= {"limit_ratio": round(statistics.median(ratios), 3), "limit_ratio_min": round(min(ratios), 3),
                "limit_ratio_max": round(max(ratios), 3),
                "cpu_ratio": round(statistics.median(r["cpu_ratio"] for r in rs), 3),
                "other_cpu_max": round(max(max(r["other_cpu"], r["limit_other_cpu"]) for r in rs), 3)}
    by_batch = {k: round(statistics.median(lim["by_batch"][k] for lim in limits), 3) for k in limits[0]["by_batch"]}
    best = [max(lim["by_batch"].values()) for lim in limits]
    return {
        "title": f"{args.arch} image classification on CPU: this runtime with adaptive batching off vs on",
        "short_title": args.arch,
        "setup": (
            f"640x480 JPEG bytes per request (decode + resize 256 + crop 224 in the server), top_k 5; CPU; "
            f"random weights (speed does not depend on them). Batching on: max_batch_size={batch}, "
            f"max_batch_delay={delay_ms:g} ms ({'set explicitly' if on else 'the flavour CPU default'}); "
            f"off: SCORING_MAX_BATCH_SIZE=1. "
            f"wrk closed loop, {args.img_seconds:g} s per point, {args.img_rounds} round(s), servers taking turns "
            f"(order reversing). The in-process limit (forward pass + top-k on preprocessed tensors, batch sizes "
            f"{', '.join(map(str, sizes))}, {args.img_limit_seconds:g} s each) is measured by a separate warm process "
            f"right before and after every point, and each point is divided by the mean of those two (best batch "
            f"size). Two servers and the limit process stay up, one measured at a time; whole machine, torch "
            f"intra-op threads = {threads} for the servers and the limit alike. Recorded per point: wrk's CPU, the "
            f"server's CPU, and the CPU that everything else on the machine used meanwhile ('other work')."
        ),
        "unit": "images",
        "order": list(variants),
        "results": results,
        "raw": raw,
        "limit": {"by_batch": by_batch, "rows_per_s": round(statistics.median(best), 3),
                  "rounds": limits, "sweep": sweep, "best_min": round(min(best), 3), "best_max": round(max(best), 3),
                  "description": "forward pass + top-k on preprocessed tensors in a separate warm process, the same "
                                 "threads, measured before and after every point; medians over all measurements"},
    }


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer/shorter points (~4 min on 2 CPUs; full run ~10 min)")
    p.add_argument("--sections", default="faq,resnet", help="comma-separated: faq, resnet (default both)")
    p.add_argument("--arch", default="resnet152", help="torchvision architecture for the image section")
    p.add_argument("--no-peers", action="store_true", help="only this runtime and the floor (no virtualenvs needed)")
    p.add_argument("--peers", default=",".join(peers.PEERS),
                   help=f"peers to run (default all: {','.join(peers.PEERS)})")
    p.add_argument("--img-batch", type=int, default=0,
                   help="image section: the 'batching on' server's max batch size (default: the flavour's)")
    p.add_argument("--img-delay-ms", type=float, default=-1.0,
                   help="image section: the 'batching on' server's max batch delay (default: the flavour's)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run that only checks the machinery")
    args = p.parse_args(argv)
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    if args.smoke:
        args.concurrency, args.repeats, args.duration = [1, 16], 1, 1.0
        args.rates, args.open_repeats = [300.0], 1
        args.img_concurrency, args.img_rounds, args.img_seconds, args.img_limit_seconds = [2], 1, 3.0, 2.0
    elif args.quick:
        args.concurrency, args.repeats, args.duration = [1, 16, 64], 2, 2.0
        args.rates, args.open_repeats = [400.0], 1
        args.img_concurrency, args.img_rounds, args.img_seconds, args.img_limit_seconds = [4], 2, 8.0, 3.0
    else:
        args.concurrency, args.repeats, args.duration = [1, 4, 16, 64], 3, 2.0
        args.rates, args.open_repeats = [200.0, 800.0], 2
        args.img_concurrency, args.img_rounds, args.img_seconds, args.img_limit_seconds = [1, 4], 3, 10.0, 4.0
    args.top_k, args.limit_seconds = 3, 3.0
    # the peers' batching (MLServer, LitServe): the same limits as this runtime's FAQ default
    from scoring_runtime.flavours import DEFAULT_BATCHING

    faq_default = DEFAULT_BATCHING["sklearn-faq"]
    args.ours_batch, args.ours_delay_ms = faq_default.max_batch_size, faq_default.max_batch_delay_ms
    args.faq_batch, args.faq_delay_ms = args.ours_batch, args.ours_delay_ms
    args.peer_versions = {}
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"faq", "resnet"}
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; use faq, resnet")
    tools_ = tools()

    t0 = time.monotonic()
    run: dict[str, Any] = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "machine": machine_info("cpu"),
        "versions": versions() | {"wrk": tool_version([tools_["wrk"] or "wrk", "-v"]),
                                  "vegeta": go_module_version(tools_["vegeta"])},
        "sections": {},
        "failures": {},
    }
    for name in sections:
        log(f"section {name}")
        if name == "faq":
            sec = section_faq(args, run["failures"], tools_)
            sec["analysis"] = faq_analysis(sec)
        else:
            sec = section_resnet(args, run["failures"], tools_)
        run["sections"][name] = sec
        run["elapsed_s"] = round(time.monotonic() - t0, 1)
        report.write(run, args.out)  # what is measured so far survives a later section's failure
    for _peer, vs in args.peer_versions.items():
        for dist, v in vs.items():
            if dist in ("mlserver", "kserve", "litserve", "azureml-inference-server-http"):
                run["versions"][dist] = v
    run["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    run["elapsed_s"] = round(time.monotonic() - t0, 1)
    paths = report.write(run, args.out)
    log(f"done in {run['elapsed_s']:.0f} s: " + ", ".join(str(p) for p in paths))
    return 0


def tool_version(cmd: list[str]) -> str:
    """`wrk -v` prints e.g. "wrk debian/4.1.0-3+b2 [epoll] Copyright ...": keep the version."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "absent"
    words = (res.stdout + res.stderr).split()
    return words[1] if len(words) > 1 else "unknown"


def go_module_version(binary: str | None) -> str:
    """The module version `go install` recorded in a Go binary (vegeta built from its module)."""
    if binary is None:
        return "absent"
    try:
        res = subprocess.run(["go", "version", "-m", binary], capture_output=True, text=True, timeout=20)
    except OSError:
        return "unknown"
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "mod":
            return parts[2]
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
