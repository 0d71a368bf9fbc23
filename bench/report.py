"""Turn a benchmark run (the dict `run.py` builds) into latest.json, latest.md and latest.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _closed(sec: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in sec["results"] if r["mode"] == "closed"]


def _open(sec: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in sec["results"] if r["mode"] == "open"]


def _order(sec: dict[str, Any]) -> dict[str, int]:
    return {t: i for i, t in enumerate(sec["order"])}


def _results_table(sec: dict[str, Any], rows: list[dict[str, Any]], point: str) -> list[str]:
    unit = sec["unit"]
    lines = [
        f"| target | {point} | {unit}/s (median) | spread | p50 ms | p90 ms | p99 ms | server CPU µs/req | "
        "mean batch | load-gen CPU (max) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = _order(sec)
    key = "concurrency" if point == "clients" else "rate"
    for r in sorted(rows, key=lambda r: (r[key], order.get(r["target"], 99))):
        lines.append(
            f"| {r['target']} | {_fmt(r[key], 0)} | {_fmt(r['rows_per_s'])} | ±{_fmt(r['spread_pct'], 0)} % "
            f"({r['repeats']}x) | {_fmt(r['p50_ms'], 2)} | {_fmt(r['p90_ms'], 2)} | {_fmt(r['p99_ms'], 2)} | "
            f"{_fmt(r.get('server_cpu_us_per_req'), 0)} | {_fmt(r.get('mean_batch'), 1)} | "
            f"{_fmt(100 * r['client_cpu_max'], 0)} % | {r['errors']} |"
        )
    return lines


def best_peer_ratios(sec: dict[str, Any]) -> list[dict[str, Any]]:
    """Per client count: this runtime (best of /score and /v2) against the best peer."""
    rows = _closed(sec)
    by = {(r["target"], r["concurrency"]): r for r in rows}
    peers = [t for t in sec["order"] if not t.startswith("this-runtime") and t != "floor"]
    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        ours = [by[(t, c)] for t in ("this-runtime /score", "this-runtime /v2") if (t, c) in by]
        cand = [by[(p, c)] for p in peers if (p, c) in by]
        if not ours or not cand:
            continue
        o = max(ours, key=lambda r: r["throughput_rps"])
        b = max(cand, key=lambda r: r["throughput_rps"])
        cpu = (round(b["server_cpu_us_per_req"] / o["server_cpu_us_per_req"], 2)
               if o.get("server_cpu_us_per_req") and b.get("server_cpu_us_per_req") else None)
        out.append({"concurrency": c, "ours": o["target"], "best_peer": b["target"],
                    "throughput_ratio": round(o["throughput_rps"] / b["throughput_rps"], 2), "cpu_ratio": cpu,
                    "p50_ratio": round(o["p50_ms"] / b["p50_ms"], 2), "p99_ratio": round(o["p99_ms"] / b["p99_ms"], 2),
                    "ours_rps": o["throughput_rps"], "peer_rps": b["throughput_rps"]})
    return out


def _faq_md(sec: dict[str, Any]) -> list[str]:
    md = [f"## {sec['title']}", "", sec["setup"], "", f"Same work check: {sec['agreement']}.", ""]
    an = sec.get("analysis", {})
    if an.get("targets"):
        md += ["### Targets (issue #13)", "", "| target | this run | met |", "|---|---|---|"]
        md += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |" for t in an["targets"]]
        md.append("")
    ratios = best_peer_ratios(sec)
    if ratios:
        md += ["### This runtime against the best peer at each load (closed loop)", "",
               "| clients | this runtime | best peer | throughput ratio | p50 ratio | p99 ratio | "
               "requests per server CPU-second ratio |",
               "|---:|---|---|---:|---:|---:|---:|"]
        md += [f"| {r['concurrency']} | {r['ours']} ({_fmt(r['ours_rps'], 0)}/s) | {r['best_peer']} "
               f"({_fmt(r['peer_rps'], 0)}/s) | **{r['throughput_ratio']:.2f}** | {r['p50_ratio']:.2f} | "
               f"{r['p99_ratio']:.2f} | {_fmt(r['cpu_ratio'], 2)} |" for r in ratios]
        md += ["", "The last column compares CPU cost: the peer's server CPU time per request divided by this "
               "runtime's. On a shared CPU, a server with several processes (LitServe, MLServer) is given a larger "
               "share of the core by the kernel's scheduler than a one-process server, which flatters its "
               "throughput; CPU time per request is not affected by that.", ""]
        md.append("")
    md += ["### Closed loop (wrk)", "", *_results_table(sec, _closed(sec), "clients"), ""]
    if _open(sec):
        md += ["### Open loop (vegeta, fixed arrival rate)", "",
               "Requests start on schedule whether or not earlier ones were answered: a server slower than the "
               "rate falls behind and its latency grows (up to vegeta's 10 s timeout, counted as errors).", ""]
        md += [*_results_table(sec, _open(sec), "rate/s"), ""]
    if an.get("overhead"):
        md += ["### Where the time goes (this runtime vs the floor and the model)", "",
               "Per request: wall = 1 / throughput; model = in-process parse + predict + render cost per row at "
               "the mean batch size the server achieved (interpolated between measured batch sizes); overhead = "
               "wall - model; floor = 1 / the floor's throughput at the same load. The CPU columns do the same "
               "with CPU time (the server process's CPU seconds per request; the model's in-process CPU seconds "
               "per row), which waiting for a core taken by other work on a shared machine does not inflate.", "",
               "| target | clients | mean batch | wall µs | model µs | overhead µs | floor µs | overhead / floor | "
               "server CPU µs | model CPU µs | CPU overhead µs | floor CPU µs | CPU overhead / floor |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        md += [f"| {r['target']} | {r['concurrency']} | {r['mean_batch']} | {_fmt(r['wall_us_per_req'], 0)} | "
               f"{_fmt(r['model_us_per_row'], 0)} | {_fmt(r['overhead_us'], 0)} | {_fmt(r['floor_us_per_req'], 0)} | "
               f"{r['overhead_vs_floor']:.2f} | {_fmt(r.get('cpu_us_per_req'), 0)} | "
               f"{_fmt(r.get('model_cpu_us_per_row'), 0)} | "
               f"{_fmt(r.get('cpu_overhead_us'), 0)} | {_fmt(r.get('floor_cpu_us_per_req'), 0)} | "
               f"{_fmt(r.get('cpu_overhead_vs_floor'), 2)} |" for r in an["overhead"]]
        md.append("")
        measured = [r for r in an["overhead"] if r.get("served_model_us_per_req")]
        if measured:
            md += ["Measured inside the server instead of estimated from the in-process limit, at one client: "
                   "the time of its model calls (predict) per request (its `scoring_batch_seconds` histogram over "
                   "the point; a lone request's model call runs on the event loop, so its wall time is CPU time; "
                   "under load the model thread shares the core with the loop and its calls' wall time includes "
                   "the loop's turns, so the split is shown for one client only) and the rest of the server's CPU "
                   "per request, the request path (HTTP, routing, parsing, rendering, batching, metrics). The same "
                   "predict calls cost more in the server than in the in-process loop, where nothing runs between "
                   "calls and the model's data stays in the CPU caches (see docs/benchmarks.md); the estimate above "
                   "counts that difference as overhead, this table does not.", "",
                   "| target | clients | mean batch | server CPU µs | predict in server µs | in-process model CPU µs | "
                   "path CPU µs | floor CPU µs | path / floor |",
                   "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            md += [f"| {r['target']} | {r['concurrency']} | {r['mean_batch']} | {_fmt(r.get('cpu_us_per_req'), 0)} | "
                   f"{_fmt(r['served_model_us_per_req'], 0)} | {_fmt(r.get('model_cpu_us_per_row'), 0)} | "
                   f"{_fmt(r['path_cpu_us'], 0)} | {_fmt(r.get('floor_cpu_us_per_req'), 0)} | "
                   f"{_fmt(r['path_vs_floor'], 2)} |" for r in measured]
            md.append("")
    lim = sec["limit"]
    md += [f"In-process limit ({lim['description']}), questions/s by batch size: "
           + ", ".join(f"{k}: {_fmt(v, 0)}" for k, v in lim["by_batch"].items())
           + f"; one question alone takes {lim['batch_1_latency_ms']:.2f} ms"
           + (f" (median of single calls back to back: {lim['batch_1_median_ms']:.2f} ms)"
              if lim.get("batch_1_median_ms") else "") + ".", ""]
    return md


def _resnet_md(sec: dict[str, Any]) -> list[str]:
    md = [f"## {sec['title']}", "", sec["setup"], ""]
    lim = sec["limit"]
    rows = sorted(_closed(sec), key=lambda r: (r["concurrency"], r["target"]))
    has_ratio = bool(rows) and "limit_ratio" in rows[0]
    if has_ratio:
        md += ["### Target (issue #13)", "", "| target | this run: served / in-process limit, median over rounds "
               "(min-max) | by CPU time | each round: served / limit (mean batch) | met |", "|---|---|---|---|---|"]
        for r in rows:
            if r["concurrency"] == 4 and r["target"].startswith("batching on"):
                each = ", ".join(f"{x['limit_ratio']:.2f} ({_fmt(x.get('mean_batch'), 1)})" for x in sec["raw"]
                                 if x["target"] == r["target"] and x["concurrency"] == 4)
                md.append(f"| 4 clients, {r['target']}: >= 0.9 of the in-process limit | {r['limit_ratio']:.2f} "
                          f"({r['limit_ratio_min']:.2f}-{r['limit_ratio_max']:.2f}) | {_fmt(r.get('cpu_ratio'), 2)} | "
                          f"{each} | {'yes' if r['limit_ratio'] >= 0.9 else '**no**'} |")
        md.append("")
    md += [*_results_table(sec, _closed(sec), "clients"), ""]
    rounds = [r.get("by_batch", r) for r in lim.get("rounds") or []]
    if sweep := lim.get("sweep"):
        md += ["In-process limit sweep before the points (images/s by batch size): "
               + ", ".join(f"{k}: {_fmt(v, 2)}" for k, v in sweep["by_batch"].items()) + ".", ""]
    md += [f"In-process limit ({lim['description']}), images/s by batch size: "
           + ", ".join(f"{k}: {_fmt(v, 2)}" for k, v in lim["by_batch"].items())
           + (f"; best batch per measurement: {', '.join(_fmt(max(r.values()), 2) for r in rounds)}" if rounds else "")
           + ".", ""]
    if has_ratio:
        md += ["| target | clients | images/s | served / limit (best batch), median | min-max | / batch-1 limit | "
               "by CPU time | mean batch | other work on the machine (CPUs, max) |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        md += [f"| {r['target']} | {r['concurrency']} | {_fmt(r['rows_per_s'], 2)} | **{r['limit_ratio']:.2f}** | "
               f"{r['limit_ratio_min']:.2f}-{r['limit_ratio_max']:.2f} | "
               f"{r['rows_per_s'] / lim['by_batch']['1']:.2f} | {_fmt(r.get('cpu_ratio'), 2)} | "
               f"{_fmt(r.get('mean_batch'), 2)} | {_fmt(r.get('other_cpu_max'), 2)} |" for r in rows]
        md += ["", "Served / limit: images/s served divided by the best batch size's images/s in-process, measured "
               "right before and after the point. By CPU time: images per second of the server's CPU divided by "
               "images per second of the limit process's CPU (how much CPU serving adds to the model's, which "
               "other work on the machine hardly moves). Other work: CPUs busy on the machine minus the server's "
               "and wrk's (or the limit process's) own, during the point or its two limit measurements."]
    else:  # a run from before the limit was measured around every point
        md += ["| target | clients | images/s | / in-process limit (best batch) | / batch-1 limit |",
               "|---|---:|---:|---:|---:|"]
        md += [f"| {r['target']} | {r['concurrency']} | {_fmt(r['rows_per_s'], 2)} | "
               f"**{r['rows_per_s'] / lim['rows_per_s']:.2f}** | {r['rows_per_s'] / lim['by_batch']['1']:.2f} |"
               for r in rows]
    md.append("")
    return md


def markdown(run: dict[str, Any]) -> str:
    m = run["machine"]
    md = [
        "# Benchmark results (latest run)",
        "",
        f"Generated {run['generated']} by `{run['command']}` ({run['mode']} mode, {run['elapsed_s']:.0f} s).",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs visible, {m['memory_gb']} GB RAM, no GPU. "
        + (m["note"] if m.get("note") else
           "**Shared**: other engineers' builds and tests ran at the same time")
        + f" (load average before/after: {m['loadavg_before']} / {m.get('loadavg_after')}). Absolute numbers vary "
        "between runs; compare ratios within this run and read the spread column. The server CPU µs/request column "
        "counts only CPU the server actually got, so it is the steadiest measure of cost.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(run["versions"].items()) if v != "absent"),
        "",
    ]
    if run.get("failures"):
        md += ["Problems during the run:", ""] + [f"- {k}: {v[:500]}" for k, v in run["failures"].items()] + [""]
    for name, sec in run["sections"].items():
        md += _faq_md(sec) if name == "faq" else _resnet_md(sec)
    md.append("Plot: latest.png. Every single measurement (each repeat) is in latest.json (`raw`).")
    return "\n".join(md) + "\n"


def plot(run: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = run["sections"]
    n = 2 + (1 if "resnet" in secs else 0)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.8))
    if "faq" in secs:
        sec = secs["faq"]
        rows = _closed(sec)
        for t in sec["order"]:
            pts = sorted((r["concurrency"], r["throughput_rps"], r["throughput_min"], r["throughput_max"], r["p99_ms"])
                         for r in rows if r["target"] == t)
            if not pts:
                continue
            style = {"linestyle": "--", "color": "grey"} if t == "floor" else {}
            xs = [p[0] for p in pts]
            axes[0].errorbar(xs, [p[1] for p in pts], yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                             marker="o", capsize=3, label=t, **style)
            axes[1].plot(xs, [p[4] for p in pts], marker="o", label=t, **style)
        for ax, title, ylabel in ((axes[0], "FAQ: throughput (median, min-max)", "requests/s"),
                                  (axes[1], "FAQ: p99 latency", "ms")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("concurrent connections (wrk)")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=7)
    if "resnet" in secs:
        sec = secs["resnet"]
        ax = axes[-1]
        rows = _closed(sec)
        cs = sorted({r["concurrency"] for r in rows})
        width = 0.8 / max(1, len(sec["order"]))
        for i, t in enumerate(sec["order"]):
            vals = [next((r["rows_per_s"] for r in rows if r["target"] == t and r["concurrency"] == c), 0) for c in cs]
            ax.bar([j + i * width for j in range(len(cs))], vals, width, label=t)
        ax.axhline(sec["limit"]["rows_per_s"], color="black", linestyle="--", label="in-process limit")
        ax.set_xticks([j + width / 2 for j in range(len(cs))], [f"{c} clients" for c in cs])
        ax.set_ylabel("images/s")
        ax.set_title(sec["short_title"] + " on CPU")
        ax.legend(fontsize=7)
    fig.suptitle(f"bench/run.py {run['mode']} run, {run['generated']} (2 shared CPUs; server on one, wrk on the other)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(run: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json", out_dir / "latest.md", out_dir / "latest.png"]
    paths[0].write_text(json.dumps(run, indent=1, default=str) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(run), encoding="utf-8")
    try:
        plot(run, paths[2])
    except ImportError:  # matplotlib is in the [bench] extra
        paths.pop()
    return paths


if __name__ == "__main__":  # re-render latest.md/png from a latest.json (after a change to the report)
    import sys

    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results" / "latest.json"
    data = json.loads(src.read_text(encoding="utf-8"))
    if "faq" in data["sections"]:
        import run

        data["sections"]["faq"]["analysis"] = run.faq_analysis(data["sections"]["faq"])
    print("\n".join(str(p) for p in write(data, src.parent)))
