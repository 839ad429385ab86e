"""PNG plots of a run: delivery latency, state agreement and convergence, traffic.

matplotlib is optional (the ``sim`` extra) and imported only here, with
the Agg backend and no pyplot, so plotting works headless and leaves no
global state behind. Each function takes a :class:`~sims.simulation.SimResult`
and an output folder and returns the files it wrote; a plot with nothing
to show is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sims.simulation import SimResult

MARKED_ACTIONS = {
    "partition": "tab:red",
    "cut": "tab:red",
    "cutlinks": "tab:red",  # the converge fuzzer's random cuts (its operation log)
    "heal": "tab:green",
    "crash": "tab:gray",
}


def _figure(width: float = 8.0, height: float = 4.5) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "plots need matplotlib: pip install 'p2pserver[sim]' (or run with --no-plots)"
        ) from exc
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_result(result: SimResult, out: Path) -> list[Path]:
    written = []
    for plot in (plot_latency, plot_convergence, plot_traffic):
        path = plot(result, out)
        if path is not None:
            written.append(path)
    return written


def plot_latency(result: SimResult, out: Path) -> Path | None:
    """Histogram and CDF of per-delivery latency (per-message medians without deliveries)."""
    return _save(latency_figure(result), out / "latency.png")


def latency_figure(result: SimResult) -> Any:
    """The figure :func:`plot_latency` writes (None if nothing was delivered)."""
    latencies, per_message = _latencies(result)
    if not latencies:
        return None
    # Without the deliveries table (metrics.deliveries = false) only each
    # message's median is known: say so, not "deliveries".
    value, unit = (
        ("per-message median latency", "messages")
        if per_message
        else ("delivery latency", "deliveries")
    )
    fig = _figure()
    hist, cdf = fig.subplots(1, 2)
    hist.hist(latencies, bins=min(60, max(10, len(latencies) // 20)), color="tab:blue")
    hist.set_xlabel(f"{value} (s)")
    hist.set_ylabel(unit)
    n = len(latencies)
    cdf.plot(latencies, [(i + 1) / n for i in range(n)], color="tab:blue")
    cdf.set_xscale("log" if latencies[0] > 0 else "linear")
    cdf.set_xlabel(f"{value} (s)")
    cdf.set_ylabel(f"fraction of {unit}")
    cdf.grid(True, alpha=0.3)
    summary = result.summary.get("delivery", {})
    ratio, p50 = summary.get("delivery_ratio"), summary.get("latency_p50")
    what = f"{value} over {n} messages" if per_message else f"{n} deliveries"
    # The summary's ratio and p50 are over all deliveries either way.
    fig.suptitle(
        f"{result.scenario.name} seed {result.seed}: {what}, "
        f"delivery ratio {ratio}, delivery p50 {p50} s"
    )
    fig.tight_layout()
    return fig


def _latencies(result: SimResult) -> tuple[list[float], bool]:
    """Sorted latencies, and whether they are per-message medians (no deliveries table)."""
    rows = result.tables.get("deliveries")
    if rows is not None:
        return sorted(r["latency"] for r in rows if r["latency"] is not None), False
    values = [
        r["latency_p50"] for r in result.tables.get("messages", []) if r["latency_p50"] is not None
    ]
    return sorted(values), True


def plot_convergence(result: SimResult, out: Path) -> Path | None:
    """State agreement over time, with partitions, heals and convergence marked."""
    return _save(convergence_figure(result), out / "convergence.png")


def _save(fig: Any, path: Path) -> Path | None:
    if fig is None:
        return None
    fig.savefig(path)
    return path


def convergence_figure(result: SimResult) -> Any:
    """The figure :func:`plot_convergence` writes (None without agreement samples or episodes)."""
    rows = [r for r in result.tables.get("agreement", []) if r["agreement"] is not None]
    episodes = result.tables.get("episodes")
    if not rows and not episodes:
        return None
    fig = _figure(9.0, 5.0)
    top, bottom = fig.subplots(2, 1, sharex=bool(rows))
    if rows:
        times = [r["time"] for r in rows]
        top.step(times, [r["agreement"] for r in rows], where="post", color="tab:blue")
        top.set_ylabel("share of joined nodes\nin the largest state")
        top.set_ylim(0, 1.05)
        bottom.step(
            times, [r["states"] for r in rows], where="post", color="tab:orange", label="states"
        )
        bottom.step(
            times, [r["heads"] for r in rows], where="post", color="tab:purple", label="head sets"
        )
        bottom.set_ylabel("distinct")
        bottom.set_xlabel("virtual time (s)")
        bottom.legend(loc="upper right")
        # A scenario's timeline, or the fuzzer's operation log.
        marks = [(e["time"], e["action"]) for e in result.tables.get("timeline", [])]
        marks += [(op["time"], op["op"]) for op in result.tables.get("oplog", [])]
        for time, action in marks:
            color = MARKED_ACTIONS.get(action)
            if color is not None:
                for ax in (top, bottom):
                    ax.axvline(time, color=color, alpha=0.4, linewidth=1)
        for row in result.tables.get("convergence", []):
            if row.get("converged_at") is not None:
                top.axvspan(row["heal_at"], row["converged_at"], color="tab:green", alpha=0.15)
    elif episodes:
        xs = [e["episode"] for e in episodes]
        top.bar(xs, [e["convergence_time"] or 0 for e in episodes], color="tab:green")
        top.set_ylabel("convergence time (s)")
        bottom.bar(xs, [e["states_before_heal"] for e in episodes], color="tab:orange")
        bottom.set_ylabel("distinct states\nbefore heal")
        bottom.set_xlabel("episode")
    fig.suptitle(f"{result.scenario.name} seed {result.seed}: state agreement and convergence")
    fig.tight_layout()
    return fig


def plot_traffic(result: SimResult, out: Path) -> Path | None:
    """Bytes sent per node, by method, nodes sorted by total."""
    rows = result.tables.get("traffic", [])
    if not rows or not any(r["bytes_sent"] for r in rows):
        return None
    methods = sorted(
        {
            k[6:]
            for r in rows
            for k in r
            if k.startswith("bytes_") and k not in ("bytes_sent", "bytes_received")
        }
    )
    ordered = sorted(rows, key=lambda r: r["bytes_sent"], reverse=True)
    fig = _figure(9.0, 4.5)
    ax = fig.subplots()
    xs = list(range(len(ordered)))
    bottom = [0.0] * len(ordered)
    for method in methods:
        values = [r.get(f"bytes_{method}", 0) / 1e6 for r in ordered]
        if any(values):
            ax.bar(xs, values, bottom=bottom, width=1.0, label=method)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("nodes, by bytes sent")
    ax.set_ylabel("MB (requests + responses by method)")
    ax.legend(fontsize="small", loc="upper right")
    total = result.summary.get("traffic", {}).get("bytes_sent", 0)
    fig.suptitle(
        f"{result.scenario.name} seed {result.seed}: traffic, {total / 1e6:.1f} MB sent in all"
    )
    fig.tight_layout()
    path = out / "traffic.png"
    fig.savefig(path)
    return path
