"""PNG bar charts for the report (matplotlib; the report notes it and stays Markdown-only without it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clients.report.render import configs


def render_charts(results: dict[str, Any], out: Path) -> tuple[list[str], str | None]:
    """PNG bar charts; ([], reason) when matplotlib is missing or nothing was measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (pip install -r requirements/report.txt), no PNG written"
    cfgs = configs(results)
    made: list[str] = []

    def bar(filename: str, title: str, ylabel: str, items: list[tuple[str, float]], note: str = "") -> None:
        items = [(k, v) for k, v in items if v]
        if not items:
            return
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
        bars = ax.bar([k for k, _ in items], [v for _, v in items], color="#4C72B0")
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.2f}" for _, v in items], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if note:
            fig.text(0.01, 0.01, note, fontsize=7, color="#555")
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        fig.savefig(out / filename)
        plt.close(fig)
        made.append(str(out / filename))

    env = results.get("environment") or {}
    note = f"{env.get('gpu', '?')}, lmdeploy {env.get('lmdeploy', '?')}, backend {env.get('backend', '?')}"
    bar(
        "kv-capacity.png",
        "KV cache tokens at cache-max-entry-count 0.4",
        "tokens",
        [(n, (c.get("kv") or {}).get("tokens")) for n, c in cfgs],
        note,
    )
    bar(
        "throughput-64.png",
        "64 concurrent streams: output tok/s",
        "tok/s",
        [(n, (c.get("streams64") or {}).get("steady_tok_s") or (c.get("streams64") or {}).get("total_tok_s")) for n, c in cfgs],
        note,
    )
    bar(
        "batch1-decode.png",
        "Batch-1 decode tok/s (median of 3)",
        "tok/s",
        [(n, (c.get("batch1") or {}).get("decode_tok_s")) for n, c in cfgs],
        note,
    )
    bar(
        "capacity-load.png",
        "Capacity-bound load: output tok/s",
        "tok/s",
        [(n, (c.get("capacity") or {}).get("total_tok_s")) for n, c in cfgs],
        note,
    )
    return made, None if made else "nothing measured to chart"
