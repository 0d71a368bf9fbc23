"""Turn a benchmark run (the dict `run.py` builds) into latest.json, latest.md and latest.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _ratio(a: float, b: float) -> float | None:
    if not (a and b) or any(math.isnan(x) for x in (a, b)):
        return None
    return round(a / b, 3)


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def pair_ratios(results: list[dict[str, Any]], ours: str, peer: str) -> list[dict[str, Any]]:
    """Per concurrency: throughput and latency of `ours` divided by those of `peer`."""
    by = {(r["target"], r["concurrency"]): r for r in results}
    out = []
    for c in sorted({r["concurrency"] for r in results}):
        a, b = by.get((ours, c)), by.get((peer, c))
        if not a or not b:
            continue
        out.append({
            "ours": ours, "peer": peer, "concurrency": c,
            "throughput_ratio": _ratio(a["throughput_rps"], b["throughput_rps"]),
            "p50_ratio": _ratio(a["p50_ms"], b["p50_ms"]),
            "p99_ratio": _ratio(a["p99_ms"], b["p99_ms"]),
        })
    return out


def limit_ratios(results: list[dict[str, Any]], target: str, limit_rows_per_s: float) -> list[dict[str, Any]]:
    return [
        {"target": target, "concurrency": r["concurrency"],
         "of_limit": _ratio(r["rows_per_s"], limit_rows_per_s)}
        for r in results if r["target"] == target
    ]


def _results_table(results: list[dict[str, Any]], unit: str) -> list[str]:
    lines = [
        f"| target | concurrency | {unit}/s | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["concurrency"], r["target"])):
        lines.append(
            f"| {r['target']} | {r['concurrency']} | {_fmt(r['rows_per_s'])} | {_fmt(r['throughput_rps'])} | "
            f"{_fmt(r['p50_ms'])} | {_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | {r['errors']} |"
        )
    return lines


def _ratio_table(ratios: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| this runtime | peer | concurrency | throughput ratio | p50 ratio | p99 ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in ratios:
        lines.append(
            f"| {r['ours']} | {r['peer']} | {r['concurrency']} | **{_fmt(r['throughput_ratio'], 2)}** | "
            f"{_fmt(r['p50_ratio'], 2)} | {_fmt(r['p99_ratio'], 2)} |"
        )
    return lines


def _limit_table(ratios: list[dict[str, Any]], limit: dict[str, Any], unit: str) -> list[str]:
    lines = [
        f"In-process limit (no HTTP): {_fmt(limit['rows_per_s'])} {unit}/s ({limit['description']}).",
        "",
        "| target | concurrency | share of the limit |",
        "|---|---:|---:|",
    ]
    for r in ratios:
        lines.append(f"| {r['target']} | {r['concurrency']} | {_fmt(r['of_limit'], 2)} |")
    return lines


def markdown(run: dict[str, Any]) -> str:
    m = run["machine"]
    out = [
        "# Benchmark results (latest run)",
        "",
        f"Generated {run['generated']} by `{run['command']}` ({run['mode']} mode).",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs visible, {m['memory_gb']} GB RAM, "
        f"device {m['device']}; load average before/after: {m['loadavg_before']} / {m['loadavg_after']} "
        "(a shared machine: other work was running).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(run["versions"].items())),
        "",
        "Ratios are this runtime divided by the peer: throughput ratio > 1 and latency ratios < 1 "
        "favour this runtime.",
    ]
    for key, sec in run["sections"].items():
        out += ["", f"## {sec['title']}", "", sec["setup"], ""]
        if sec.get("skipped"):
            out += [f"Skipped: {sec['skipped']}"]
            continue
        if sec.get("agreement"):
            out += [f"Same work check: {sec['agreement']}", ""]
        if sec.get("ratios"):
            out += ["### Ratios", "", *_ratio_table(sec["ratios"]), ""]
        if sec.get("limit"):
            out += ["### Against the limit", "", *_limit_table(sec["limit_ratios"], sec["limit"], sec["unit"]), ""]
        out += ["### Raw numbers", "", *_results_table(sec["results"], sec["unit"])]
        for note in sec.get("notes", []):
            out += ["", f"- {note}"]
        if key in run.get("failures", {}):
            out += ["", f"Failures: {run['failures'][key]}"]
    return "\n".join(out) + "\n"


def plot(run: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = [(k, s) for k, s in run["sections"].items() if s.get("results")]
    fig, axes = plt.subplots(1, 2 * len(secs) if secs else 1, figsize=(6.2 * max(1, 2 * len(secs)), 4.8),
                             squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (_, sec) in enumerate(secs):
        ax_t, ax_l = axes[0][2 * n], axes[0][2 * n + 1]
        targets = sorted({r["target"] for r in sec["results"]}, key=sec.get("order", []).index
                         if sec.get("order") else None)
        for i, t in enumerate(targets):
            rows = sorted((r for r in sec["results"] if r["target"] == t), key=lambda r: r["concurrency"])
            cs = [r["concurrency"] for r in rows]
            style = {"color": colours[i % len(colours)], "marker": "o", "label": t}
            ax_t.plot(cs, [r["rows_per_s"] for r in rows], **style)
            ax_l.plot(cs, [r["p99_ms"] for r in rows], **style)
            ax_l.plot(cs, [r["p50_ms"] for r in rows], color=style["color"], marker=".", linestyle=":", alpha=0.7)
        if sec.get("limit"):
            ax_t.axhline(sec["limit"]["rows_per_s"], color="black", linestyle="--", linewidth=1,
                         label=f"in-process limit ({sec['limit']['short']})")
        for ax in (ax_t, ax_l):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.grid(True, which="both", alpha=0.3)
            cs_all = sorted({r["concurrency"] for r in sec["results"]})
            ax.set_xticks(cs_all, [str(c) for c in cs_all])
        ax_t.set_ylabel(f"{sec['unit']} / s (higher is better)")
        ax_t.set_title(f"{sec['short_title']}: throughput")
        ax_t.set_ylim(bottom=0)
        ax_t.legend(fontsize=8)
        ax_l.set_ylabel("latency ms: p99 solid, p50 dotted (lower is better)")
        ax_l.set_yscale("log")
        ax_l.set_title(f"{sec['short_title']}: latency")
        ax_l.legend(fontsize=8)
    m = run["machine"]
    fig.suptitle(f"scoring runtime benchmark, {run['generated'][:16]} - {m['cpu_model']} ({m['cpus']} CPUs), "
                 f"device {m['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(run: dict[str, Any], out_dir: Path) -> list[Path]:
    for sec in run["sections"].values():
        if sec.get("results") and sec.get("pairs"):
            sec["ratios"] = [r for ours, peer in sec["pairs"] for r in pair_ratios(sec["results"], ours, peer)]
        if sec.get("results") and sec.get("limit"):
            sec["limit_ratios"] = [
                r for t in sec["limit_targets"] for r in limit_ratios(sec["results"], t, sec["limit"]["rows_per_s"])
            ]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json", out_dir / "latest.md", out_dir / "latest.png"]
    paths[0].write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(run), encoding="utf-8")
    plot(run, paths[2])
    return paths
