"""Compiled load generators, driven from Python: `wrk` (closed loop) and `vegeta` (open loop).

A Python load generator saturates before a fast server does (on this project's 2-CPU machines an
aiohttp client topped out near 900 requests/s while `wrk` measured the same server at 1,700), so
every throughput and latency number in the report comes from a compiled tool:

- closed loop (`closed_loop`): `wrk` with N connections, each sending its next request as soon as
  the previous answer arrived; the request bodies rotate through a list (a generated Lua script);
- open loop (`open_loop`): `vegeta attack` at a fixed arrival rate, whatever the server's speed, so
  queueing shows up as latency (wrk's closed loop hides it: a slow answer delays the next request).

Each run records the load generator's own CPU time (from `wait4`'s rusage) and the server's (from
/proc, its whole process tree), so the report can show the generator was far from saturated
and the server was the one working. Both tools are pinned to the CPUs given (`taskset`-style).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TOOLS_DIR = Path(os.environ.get("SCORING_BENCH_TOOLS", Path.home() / ".cache" / "scoring-operator" / "bench-bin"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Call:
    """One request template: POST `body` to `path` with `content_type`; `rows` items in it."""

    path: str
    body: bytes
    content_type: str = "application/json"
    rows: int = 1


@dataclass
class LoadResult:
    target: str
    mode: str  # "closed" (wrk, N connections) or "open" (vegeta, fixed rate)
    concurrency: int  # connections (closed loop); 0 for open loop
    rate: float  # offered requests/s (open loop); 0 for closed loop
    requests: int
    errors: int
    duration_s: float
    throughput_rps: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    client_cpu: float  # load generator CPU seconds / wall seconds (1.0 = one core saturated)
    server_cpu: float  # server process tree CPU seconds / wall seconds
    repeat: int = 0
    error_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 4)
        return d


def find_tool(name: str) -> str | None:
    """`wrk` / `vegeta` on PATH or in the bench tools cache (hack/bench-tools.sh puts vegeta there)."""
    cached = TOOLS_DIR / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which(name)


# ---------------------------------------------------------------------------------------- CPU time
def _proc_cpu(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # after the ")": state is fields[0]; utime, stime are fields 14 and 15 of stat (1-based) -> [11], [12]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        pass
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by `pid` and every live descendant (servers with worker processes)."""
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _proc_cpu(p)
        todo += _children(p)
    return total


def _run_with_rusage(cmd: list[str], cpus: set[int] | None, server_pid: int | None,
                     out_path: Path | None = None) -> tuple[str, str, float, float, float]:
    """Run `cmd` pinned to `cpus`, reaping it with wait4 to get its CPU time exactly.

    Returns (stdout, stderr, wall s, the command's CPU s, the server tree's CPU s meanwhile).
    """

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        srv0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
        t0 = time.perf_counter()
        target = out_path.open("wb") if out_path is not None else out_f
        try:
            proc = subprocess.Popen(cmd, stdout=target, stderr=err_f, preexec_fn=pin)
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            srv1 = tree_cpu_seconds(server_pid) if server_pid else 0.0
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if out_path is not None:
                target.close()
        out_f.seek(0)
        err_f.seek(0)
        out = out_f.read().decode(errors="replace")
        err = err_f.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {err[-2000:] or out[-2000:]}")
    return out, err, wall, ru.ru_utime + ru.ru_stime, srv1 - srv0


# ---------------------------------------------------------------------------------------- wrk
def _lua_string(b: bytes) -> str:
    return '"' + "".join(f"\\{c}" for c in b) + '"'


def wrk_script(calls: Sequence[Call], path: Path) -> Path:
    """A wrk Lua script that sends `calls` round robin and prints its results as one JSON line."""
    lines = ["local reqs = {}", "local bodies = {"]
    lines += [f"  {{{_lua_string(c.path.encode())}, {_lua_string(c.content_type.encode())}, "
              f"{_lua_string(c.body)}}}," for c in calls]
    lines += [
        "}",
        "local n = #bodies",
        "local i = 0",
        "init = function(args)",
        "  for k, b in ipairs(bodies) do",
        '    reqs[k] = wrk.format("POST", b[1], {["Content-Type"] = b[2]}, b[3])',
        "  end",
        "end",
        "request = function()",
        "  i = i % n + 1",
        "  return reqs[i]",
        "end",
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        '  io.write(string.format(\'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
        '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
        '"mean_us": %.1f}\\n\', summary.requests, summary.duration, e.connect, e.read, e.write, e.status, '
        "e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, "
        "latency.mean))",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def closed_loop(wrk: str, base_url: str, script: Path, *, target: str, connections: int, duration_s: float,
                rows_per_request: int = 1, client_cpus: set[int] | None = None, server_pid: int | None = None,
                timeout_s: float = 10.0) -> LoadResult:
    """`wrk -t1 -c N -d D`: N connections on one load-generator thread, closed loop."""
    # wrk takes whole seconds only ("-d2.5s" is a usage error)
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", f"--timeout={max(1, round(timeout_s))}s",
           "-s", str(script), base_url]
    out, _err, wall, cpu, srv = _run_with_rusage(cmd, client_cpus, server_pid)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result line:\n{out[-2000:]}")
    r = json.loads(line.removeprefix("WRKJSON "))
    dur = r["duration_us"] / 1e6
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    ok = max(r["requests"] - r["status"], 0)
    samples = [f"{k} errors: {r[k]}" for k in ("connect", "read", "write", "status", "timeout") if r[k]]
    return LoadResult(
        target=target, mode="closed", concurrency=connections, rate=0.0, requests=r["requests"], errors=errors,
        duration_s=dur, throughput_rps=ok / dur, rows_per_s=ok * rows_per_request / dur,
        p50_ms=r["p50_us"] / 1000, p90_ms=r["p90_us"] / 1000, p99_ms=r["p99_us"] / 1000, max_ms=r["max_us"] / 1000,
        client_cpu=cpu / wall, server_cpu=srv / wall, error_samples=samples,
    )


# ---------------------------------------------------------------------------------------- vegeta
def vegeta_targets(base_url: str, calls: Sequence[Call], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for c in calls:
            f.write(json.dumps({"method": "POST", "url": base_url + c.path,
                                "body": base64.b64encode(c.body).decode(),
                                "header": {"Content-Type": [c.content_type]}}) + "\n")
    return path


def open_loop(vegeta: str, targets: Path, *, target: str, rate: float, duration_s: float, rows_per_request: int = 1,
              client_cpus: set[int] | None = None, server_pid: int | None = None, timeout_s: float = 10.0,
              max_workers: int = 256) -> LoadResult:
    """`vegeta attack -rate R`: requests start on schedule whether or not earlier ones were answered."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "results.bin"
        cmd = [vegeta, "attack", "-format=json", f"-targets={targets}", f"-rate={rate:g}/s",
               f"-duration={duration_s:g}s", f"-timeout={timeout_s:g}s", f"-max-workers={max_workers}",
               "-keepalive=true"]
        _out, _err, wall, cpu, srv = _run_with_rusage(cmd, client_cpus, server_pid, out_path=raw)
        rep = subprocess.run([vegeta, "report", "-type=json", str(raw)], capture_output=True, text=True, check=True)
    r = json.loads(rep.stdout)
    lat = r["latencies"]
    n = int(r["requests"])
    ok = round(n * float(r["success"]))
    dur = (r["duration"] + r["wait"]) / 1e9 or duration_s
    codes = {k: v for k, v in (r.get("status_codes") or {}).items() if not str(k).startswith("2")}
    return LoadResult(
        target=target, mode="open", concurrency=0, rate=rate, requests=n, errors=n - ok, duration_s=dur,
        throughput_rps=float(r["throughput"]), rows_per_s=float(r["throughput"]) * rows_per_request,
        p50_ms=lat["50th"] / 1e6, p90_ms=lat["90th"] / 1e6, p99_ms=lat["99th"] / 1e6, max_ms=lat["max"] / 1e6,
        client_cpu=cpu / wall, server_cpu=srv / wall,
        error_samples=[f"HTTP {k}: {v}" for k, v in codes.items()] + list((r.get("errors") or [])[:3]),
    )
