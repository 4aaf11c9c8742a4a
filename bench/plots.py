"""PNG plots of a ``results.json``: drawn from the file alone, so any saved file can be re-plotted.

Uses matplotlib's object API (a ``Figure`` with an Agg canvas) and never pyplot: nothing needs
a display, and no global figure state survives between calls (the suite draws from a process
that also measures; a leaked figure would be memory that grows with every run).

- run: ``latency.png`` (percentiles per target, one panel per scenario), ``throughput.png``
  (RPS bars) and ``cpu.png`` (CPU-µs per request, user + system, ratio to the peers);
- sweep: ``sweep.png`` (p99 and p50 against the offered rate, target p99, best rate);
- scale: ``scale.png`` (RPS against workers with the linear ideal; CPU-µs per request).

Skipped scenarios, and scenarios without the figures a plot needs, are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator

from bench.results import TIMES, commit_label, normalize, number, ran

PERCENTILES: Final = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p95_ms", "p95"),
                      ("p99_ms", "p99"), ("p999_ms", "p99.9"))
#: The same colour for a target in every plot; others take the next free one.
COLOURS: Final = {"fastgw": "#d62728", "nginx": "#2ca02c", "haproxy": "#1f77b4"}
SPARE_COLOURS: Final = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
PANEL_W, PANEL_H = 5.4, 3.9  # inches per panel
DPI: Final = 110
THOUSANDS: Final = FuncFormatter(lambda v, _pos: f"{v:,.0f}")


def _colour(target: str, order: Sequence[str]) -> str:
    if target in COLOURS:
        return COLOURS[target]
    others = [t for t in order if t not in COLOURS]
    return SPARE_COLOURS[others.index(target) % len(SPARE_COLOURS)] if target in others \
        else SPARE_COLOURS[0]


def _targets(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every target of the entries, fastgw first, then in the order they appear."""
    names = list(dict.fromkeys(t for e in entries for t in e["targets"]))
    return sorted(names, key=lambda t: t != "fastgw")


def short_cpu(model: object) -> str:
    """ "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz" -> "Intel Xeon Platinum 8375C"."""
    if not isinstance(model, str) or not model.strip():
        return "unknown CPU"
    text = model.split("@")[0]
    for noise in ("(R)", "(r)", "(TM)", "(tm)", " CPU", " Processor"):
        text = text.replace(noise, "")
    words = [w for w in text.split() if not w.endswith("-Core")]
    short = " ".join(words)
    return short if len(short) <= 32 else short[:31] + "…"


def subtitle(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    cores = number(machine.get("cpu_count"))
    return (f"{'?' if cores is None else int(cores)} {TIMES} {short_cpu(machine.get('cpu_model'))}"
            f" — commit {commit_label(machine)}")


def _figure(title: str, results: Mapping[str, Any], panels: int, ncols: int = 3,
            width: float = PANEL_W) -> tuple[Figure, list[Axes]]:
    """A figure with exactly ``panels`` axes (the grid's unused cells removed)."""
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(width * ncols, PANEL_H * nrows + 0.4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[panels:]:
        ax.remove()
    fig.suptitle(f"{title}\n{subtitle(results)}", fontsize=11)
    return fig, axes[:panels]


def _values(items: Iterable[object]) -> list[float]:
    """Numbers for matplotlib: missing ones as NaN (a gap in a line)."""
    return [math.nan if v is None else v for v in (number(x) for x in items)]


class PlainLog(LogFormatter):
    """Log-axis labels as plain numbers ("0.6", "20"): matplotlib picks which ticks get one."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _log_if_positive(ax: Axes, values: Iterable[float], axis: str = "y") -> None:
    """Log scale only when there is something to show on it: matplotlib warns otherwise."""
    if any(v > 0 for v in values if not math.isnan(v)):
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        # plain "3", "20", "0.5" rather than the default 3 times 10⁰: these are milliseconds
        target = ax.yaxis if axis == "y" else ax.xaxis
        target.set_major_formatter(PlainLog())
        target.set_minor_formatter(PlainLog(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _has(entry: Mapping[str, Any], keys: Iterable[str]) -> bool:
    return any(number(t.get(k)) is not None for t in entry["targets"].values() for k in keys)


# -- run ------------------------------------------------------------------------------------


def latency_figure(results: Mapping[str, Any], entries: Mapping[str, Any]) -> Figure:
    fig, axes = _figure("Latency percentiles (median over runs)", results, len(entries))
    order = _targets(entries.values())
    for ax, (name, entry) in zip(axes, entries.items(), strict=True):
        shown: list[float] = []
        for target, t in entry["targets"].items():
            ys = _values(t.get(k) for k, _ in PERCENTILES)
            shown += ys
            ax.plot([label for _, label in PERCENTILES], ys, marker="o", label=target,
                    color=_colour(target, order))
        _log_if_positive(ax, shown)
        ax.set_title(f"{name} ({entry.get('generator') or '?'})", fontsize=10)
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency, ms (log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _grouped_x(n_targets: int, index: int) -> tuple[float, float]:
    """Offset and width of target ``index``'s bar within a group centred on 0."""
    width = 0.8 / max(1, n_targets)
    return (index - (n_targets - 1) / 2) * width, width


def throughput_figure(results: Mapping[str, Any], entries: Mapping[str, Any]) -> Figure:
    fig, (ax,) = _figure("Throughput (median over runs)", results, 1,
                         width=max(PANEL_W, 1.8 * len(entries) + 2.5))
    order = _targets(entries.values())
    names = list(entries)
    for i, target in enumerate(order):
        offset, width = _grouped_x(len(order), i)
        values = [number(entries[n]["targets"].get(target, {}).get("rps")) for n in names]
        bars = ax.bar([x + offset for x in range(len(names))], [v or 0.0 for v in values],
                      width, label=target, color=_colour(target, order))
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:,.0f}" for v in values],
                     fontsize=7, padding=2)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("requests per second")
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.margins(y=0.12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _cpu_ratio(entry: Mapping[str, Any], peer: str) -> float | None:
    ratio = entry["ratios"].get(f"fastgw/{peer}")
    if isinstance(ratio, Mapping) and number(ratio.get("cpu_us_per_request")) is not None:
        return number(ratio["cpu_us_per_request"])
    mine = number(entry["targets"].get("fastgw", {}).get("cpu_us_per_request"))
    theirs = number(entry["targets"].get(peer, {}).get("cpu_us_per_request"))
    return mine / theirs if mine is not None and theirs else None


def cpu_figure(results: Mapping[str, Any], entries: Mapping[str, Any]) -> Figure:
    fig, (ax,) = _figure("Proxy CPU per request (master + workers; median over runs)", results,
                         1, width=max(PANEL_W, 1.8 * len(entries) + 2.5))
    order = _targets(entries.values())
    names = list(entries)
    top = 0.0
    for i, target in enumerate(order):
        offset, width = _grouped_x(len(order), i)
        colour = _colour(target, order)
        for x, name in enumerate(names):
            t = entries[name]["targets"].get(target, {})
            total = number(t.get("cpu_us_per_request"))
            user, system = number(t.get("user_us_per_request")), number(t.get(
                "system_us_per_request"))
            at = x + offset
            if user is not None and system is not None:
                ax.bar(at, user, width, color=colour, edgecolor="black", linewidth=0.5)
                ax.bar(at, system, width, bottom=user, color=colour, alpha=0.45, hatch="//",
                       edgecolor="black", linewidth=0.5)
                total = total if total is not None else user + system
                height = max(total, user + system)
            else:
                ax.bar(at, total or 0.0, width, color=colour, edgecolor="black",
                       linewidth=0.5)
                height = total or 0.0
            text = "n/a" if total is None else f"{total:.1f}"
            if target == "fastgw":
                text += "".join(f"\n{r:.2f}{TIMES} {peer}" for peer in order[1:]
                                if (r := _cpu_ratio(entries[name], peer)) is not None)
            ax.annotate(text, (at, height), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
            top = max(top, height)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("CPU-µs per request")
    ax.set_ylim(0, top * 1.35 + 1e-9 if top else 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    handles = [Patch(facecolor=_colour(t, order), edgecolor="black", label=t) for t in order]
    handles += [Patch(facecolor="white", edgecolor="black", label="user (solid)"),
                Patch(facecolor="white", edgecolor="black", hatch="//", label="system (hatched)")]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# -- sweep ----------------------------------------------------------------------------------


def sweep_figure(results: Mapping[str, Any], entries: Mapping[str, Any]) -> Figure:
    fig, axes = _figure("Latency against offered rate (open loop)", results, len(entries),
                        ncols=2, width=PANEL_W * 1.2)
    order = _targets(entries.values())
    for ax, (name, entry) in zip(axes, entries.items(), strict=True):
        shown: list[float] = []
        limits: set[float] = set()
        crossed = False
        for target, t in entry["targets"].items():
            colour = _colour(target, order)
            steps = sorted((s for s in t.get("steps") or [] if isinstance(s, Mapping)
                            and number(s.get("rate")) is not None), key=lambda s: s["rate"])
            rates = [float(s["rate"]) for s in steps]
            p99, p50 = _values(s.get("p99_ms") for s in steps), _values(
                s.get("p50_ms") for s in steps)
            shown += p99 + p50
            ax.plot(rates, p99, marker="o", color=colour, label=f"{target} p99")
            ax.plot(rates, p50, marker=".", linestyle="--", color=colour, alpha=0.7,
                    label=f"{target} p50")
            over = [(r, y) for r, y, s in zip(rates, p99, steps, strict=True)
                    if s.get("ok") is False and not math.isnan(y)]
            if over:  # one legend entry for every target's failed steps
                ax.scatter(*zip(*over, strict=True), marker="x", s=60, color="black",
                           zorder=3, label="_nolegend_" if crossed else "step over the target")
                crossed = True
            best = number(t.get("best_rate"))
            if best is not None:
                at = [y for r, y in zip(rates, p99, strict=True) if r == best]
                ax.axvline(best, color=colour, linestyle="-.", alpha=0.5)
                if at and not math.isnan(at[0]):
                    ax.scatter([best], at[:1], marker="*", s=220, color=colour,
                               edgecolor="black", zorder=4,
                               label=f"{target} best {best:,.0f} req/s")
            if (limit := number(t.get("target_p99_ms"))) is not None:
                limits.add(limit)
        for limit in sorted(limits):
            ax.axhline(limit, color="grey", linestyle=":", linewidth=1.5,
                       label=f"target p99 {limit:g} ms")
            shown.append(limit)
        _log_if_positive(ax, shown)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("offered rate, requests per second")
        ax.set_ylabel("latency, ms (log scale)")
        ax.xaxis.set_major_formatter(THOUSANDS)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


# -- scale ----------------------------------------------------------------------------------


def scale_figure(results: Mapping[str, Any], entries: Mapping[str, Any]) -> Figure:
    fig, axes = _figure("Scaling with workers", results, 2 * len(entries), ncols=2)
    order = _targets(entries.values())
    for i, (name, entry) in enumerate(entries.items()):
        rps_ax, cpu_ax = axes[2 * i], axes[2 * i + 1]
        ticks: set[int] = set()
        for target, t in entry["targets"].items():
            colour = _colour(target, order)
            points = sorted((p for p in t.get("points") or [] if isinstance(p, Mapping)
                             and number(p.get("workers")) is not None),
                            key=lambda p: p["workers"])
            workers = [int(p["workers"]) for p in points]
            ticks.update(workers)
            rps = _values(p.get("rps") for p in points)
            rps_ax.plot(workers, rps, marker="o", color=colour, label=target)
            base = next(((w, r) for w, r in zip(workers, rps, strict=True)
                         if not math.isnan(r) and r > 0), None)
            if base is not None:  # linear from the 1-worker point (or the smallest measured)
                ideal = [base[1] * w / base[0] for w in workers]
                rps_ax.plot(workers, ideal, linestyle=":", color=colour, alpha=0.8,
                            label=f"{target} linear")
                last = len(workers) - 1
                if last > 0 and not math.isnan(rps[last]):  # efficiency where it matters most
                    rps_ax.annotate(f"{rps[last] / ideal[last]:.0%} of linear",
                                    (workers[last], rps[last]), xytext=(-6, -12),
                                    textcoords="offset points", ha="right", fontsize=7,
                                    color=colour)
            cpu_ax.plot(workers, _values(p.get("cpu_us_per_request") for p in points),
                        marker="o", color=colour, label=target)
        for ax in (rps_ax, cpu_ax):
            ax.set_xlabel("workers")
            # linear axes, so that the ideal is a straight line; ticks at the measured
            # worker counts unless they would crowd (1, 2, 4 ... 64)
            if ticks and max(ticks) <= 16:
                ax.set_xticks(sorted(ticks))
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(left=0)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        rps_ax.set_title(f"{name}: throughput", fontsize=10)
        rps_ax.set_ylabel("requests per second")
        rps_ax.yaxis.set_major_formatter(THOUSANDS)
        rps_ax.set_ylim(bottom=0)
        cpu_ax.set_title(f"{name}: proxy CPU per request", fontsize=10)
        cpu_ax.set_ylabel("CPU-µs per request")
        cpu_ax.set_ylim(bottom=0)
    return fig


# -- entry points ---------------------------------------------------------------------------


def build_figures(results: Mapping[str, Any]) -> dict[str, Figure]:
    """File name -> figure, for what ``results`` holds; empty when nothing ran."""
    norm = normalize(results)
    done = ran(norm)

    def shaped(shape: str, keys: Iterable[str]) -> dict[str, Any]:
        keys = tuple(keys)
        return {n: e for n, e in done.items() if e["shape"] == shape and e["targets"]
                and (not keys or _has(e, keys))}

    figures: dict[str, Figure] = {}
    if latency := shaped("load", [k for k, _ in PERCENTILES]):
        figures["latency.png"] = latency_figure(norm, latency)
    if throughput := shaped("load", ["rps"]):
        figures["throughput.png"] = throughput_figure(norm, throughput)
    if cpu := shaped("load", ["cpu_us_per_request", "user_us_per_request"]):
        figures["cpu.png"] = cpu_figure(norm, cpu)
    if sweep := shaped("sweep", []):
        figures["sweep.png"] = sweep_figure(norm, sweep)
    if scale := shaped("scale", []):
        figures["scale.png"] = scale_figure(norm, scale)
    return figures


def write_plots(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write the PNGs for ``results`` into ``out_dir``; their paths (none when nothing ran)."""
    figures = build_figures(results)
    if figures:
        out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out_dir / name
        fig.savefig(path, dpi=DPI)
        paths.append(path)
    return paths
