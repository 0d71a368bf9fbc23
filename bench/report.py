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


def limit_ratios(results: list[dict[str, Any]], target: str, limit: dict[str, Any]) -> list[dict[str, Any]]:
    """Served throughput as a share of the in-process limit (best batch size, and batch size 1)."""
    return [
        {"target": target, "concurrency": r["concurrency"],
         "of_limit": _ratio(r["rows_per_s"], limit["rows_per_s"]),
         "of_batch_1_limit": _ratio(r["rows_per_s"], limit["batch_1_rows_per_s"])}
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
        "| target | concurrency | this runtime / limit | this runtime / batch-1 limit |",
        "|---|---:|---:|---:|",
    ]
    for r in ratios:
        lines.append(f"| {r['target']} | {r['concurrency']} | **{_fmt(r['of_limit'], 2)}** | "
                     f"{_fmt(r['of_batch_1_limit'], 2)} |")
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


def _targets(sec: dict[str, Any]) -> list[str]:
    present = {r["target"] for r in sec["results"]}
    return [t for t in sec.get("order", sorted(present)) if t in present]


def _lines(ax_t: Any, ax_l: Any, sec: dict[str, Any], colours: list[str]) -> None:
    """Throughput and latency against concurrency, one line per target (many concurrency levels)."""
    for i, t in enumerate(_targets(sec)):
        rows = sorted((r for r in sec["results"] if r["target"] == t), key=lambda r: r["concurrency"])
        cs = [r["concurrency"] for r in rows]
        colour = colours[i % len(colours)]
        ax_t.plot(cs, [r["rows_per_s"] for r in rows], color=colour, marker="o", label=t)
        ax_l.plot(cs, [r["p99_ms"] for r in rows], color=colour, marker="o", label=f"{t} p99")
        ax_l.plot(cs, [r["p50_ms"] for r in rows], color=colour, marker=".", linestyle=":", alpha=0.8)
    if sec.get("limit"):
        ax_t.axhline(sec["limit"]["rows_per_s"], color="black", linestyle="--", linewidth=1,
                     label=f"in-process limit ({sec['limit']['short']})")
    cs_all = sorted({r["concurrency"] for r in sec["results"]})
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs_all, [str(c) for c in cs_all])
        ax.set_xlabel("concurrent clients")
        ax.grid(True, which="both", alpha=0.3)
    ax_l.set_yscale("log")
    ax_l.set_ylabel("latency, ms (solid p99, dotted p50; lower is better)")


def _bars(ax_t: Any, ax_l: Any, sec: dict[str, Any], colours: list[str]) -> None:
    """Few concurrency levels: grouped bars per concurrency, limits as horizontal lines."""
    import numpy as np

    targets = _targets(sec)
    cs = sorted({r["concurrency"] for r in sec["results"]})
    by = {(r["target"], r["concurrency"]): r for r in sec["results"]}
    width = 0.8 / len(targets)
    x = np.arange(len(cs))
    for i, t in enumerate(targets):
        colour = colours[i % len(colours)]
        pos = x + (i - (len(targets) - 1) / 2) * width
        tput = [by[(t, c)]["rows_per_s"] if (t, c) in by else 0 for c in cs]
        bars = ax_t.bar(pos, tput, width, color=colour, label=t)
        ax_t.bar_label(bars, fmt="%.2f", fontsize=8)
        p50 = [by[(t, c)]["p50_ms"] if (t, c) in by else 0 for c in cs]
        p99 = [by[(t, c)]["p99_ms"] if (t, c) in by else 0 for c in cs]
        ax_l.bar(pos, p99, width, color=colour, alpha=0.35, label=f"{t} p99")
        ax_l.bar(pos, p50, width * 0.5, color=colour, label=f"{t} p50")
    limit = sec.get("limit") or {}
    styles = iter(["--", ":"])
    for key, value in limit.items():
        if key.startswith("batch_") and key.endswith("_rows_per_s"):
            size = key.removeprefix("batch_").removesuffix("_rows_per_s")
            ax_t.axhline(value, color="black", linestyle=next(styles, "-."), linewidth=1,
                         label=f"in-process limit, batch {size}")
    top = max([r["rows_per_s"] for r in sec["results"]] + [v for k, v in limit.items() if k.startswith("batch_")])
    ax_t.set_ylim(0, top * 1.45)  # room for the legend above the bars
    ax_l.set_ylim(0, max(r["p99_ms"] for r in sec["results"]) * 1.45)
    for ax in (ax_t, ax_l):
        ax.set_xticks(x, [f"{c} client{'' if c == 1 else 's'}" for c in cs])
        ax.grid(True, axis="y", alpha=0.3)
    ax_l.set_ylabel("latency, ms (pale p99, dark p50; lower is better)")


def plot(run: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = [s for s in run["sections"].values() if s.get("results")]
    fig, axes = plt.subplots(max(1, len(secs)), 2, figsize=(13, 4.6 * max(1, len(secs))), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, sec in zip(axes, secs, strict=False):
        ax_t, ax_l = row
        many = len({r["concurrency"] for r in sec["results"]}) > 2
        (_lines if many else _bars)(ax_t, ax_l, sec, colours)
        ax_t.set_ylabel(f"{sec['unit']} / s (higher is better)")
        if many:
            ax_t.set_ylim(bottom=0)
        ax_t.set_title(f"{sec['short_title']}: throughput")
        ax_l.set_title(f"{sec['short_title']}: latency")
        ax_t.legend(fontsize=8)
        ax_l.legend(fontsize=8)
    m = run["machine"]
    fig.suptitle(f"scoring runtime benchmark {run['generated'][:16]}Z ({run['mode']}): {m['cpu_model']}, "
                 f"{m['cpus']} CPUs, device {m['device']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(run: dict[str, Any], out_dir: Path) -> list[Path]:
    for sec in run["sections"].values():
        if sec.get("results") and sec.get("pairs"):
            sec["ratios"] = [r for ours, peer in sec["pairs"] for r in pair_ratios(sec["results"], ours, peer)]
        if sec.get("results") and sec.get("limit"):
            sec["limit_ratios"] = [
                r for t in sec["limit_targets"] for r in limit_ratios(sec["results"], t, sec["limit"])
            ]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json", out_dir / "latest.md", out_dir / "latest.png"]
    paths[0].write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(run), encoding="utf-8")
    plot(run, paths[2])
    return paths
