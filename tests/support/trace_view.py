"""A waterfall of one trace's exported spans as one static HTML page (what a trace viewer such
as Jaeger shows), for the screenshot in docs/operations.md; no script, no external asset."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Protocol

_COLOURS = {"poll": "#3b82f6", "web": "#8b5cf6", "worker": "#10b981"}
_SHOWN = (
    "dispatcher.integration_id", "dispatcher.order_id", "dispatcher.source", "dispatcher.handler",
    "dispatcher.attempt", "dispatcher.outcome", "dispatcher.queue_wait_s", "dispatcher.retried",
    "http.status_code", "http.response.status_code", "server.address",
)  # fmt: skip


class SpanLike(Protocol):
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]
    command: str


def _ordered(spans: Sequence[SpanLike]) -> list[tuple[int, SpanLike]]:
    ids = {span.span_id for span in spans}
    children: dict[str, list[SpanLike]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        children.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    rows: list[tuple[int, SpanLike]] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            rows.append((depth, span))
            walk(span.span_id, depth + 1)

    walk("", 0)
    return rows


def render_html(spans: Sequence[SpanLike], title: str) -> str:
    """The page: one row per span, indented under its parent, its bar placed in time."""
    start = min(span.start_ns for span in spans)
    total = max(span.end_ns for span in spans) - start or 1
    rows = []
    for depth, span in _ordered(spans):
        left = 100 * (span.start_ns - start) / total
        width = max(0.3, 100 * (span.end_ns - span.start_ns) / total)
        colour = _COLOURS.get(span.command, "#6b7280")
        shown = [
            f"{k.split('.', 1)[-1]}={span.attributes[k]}" for k in _SHOWN if k in span.attributes
        ]
        if span.links:
            shown.append("linked to " + ", ".join(f"{s[:8]}…" for _, s in span.links))
        rows.append(
            f'<tr><td class="name" style="padding-left:{8 + 18 * depth}px">'
            f'<span class="dot" style="background:{colour}"></span>{html.escape(span.name)}'
            f'<div class="attrs">{html.escape(" · ".join(shown))}</div></td>'
            f'<td class="proc">{html.escape(span.command)}</td>'
            f'<td class="ms">{(span.end_ns - span.start_ns) / 1e6:.1f} ms</td>'
            f'<td class="lane"><div class="bar" style="left:{left:.2f}%;width:{width:.2f}%;'
            f'background:{colour}"></div></td></tr>'
        )
    legend = " ".join(
        f'<span class="dot" style="background:{c}"></span>dispatcher {p}'
        for p, c in _COLOURS.items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #111827; }}
h1 {{ font-size: 16px; margin: 0 0 4px; }} .sub {{ color: #6b7280; margin-bottom: 12px; }}
table {{ border-collapse: collapse; width: 100%; table-layout: fixed; }}
td {{ border-bottom: 1px solid #e5e7eb; padding: 5px 8px; vertical-align: top; }}
td.name {{ width: 38%; }} td.proc {{ width: 7%; color: #374151; }}
td.ms {{ width: 7%; text-align: right; font-variant-numeric: tabular-nums; }}
td.lane {{ position: relative; }} .bar {{ position: absolute; top: 9px; height: 12px; border-radius: 2px; }}
.attrs {{ color: #6b7280; font-size: 11px; margin-top: 2px; word-break: break-all; }}
.dot {{ display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 6px; }}
</style></head><body><h1>{html.escape(title)}</h1>
<div class="sub">trace {html.escape(spans[0].trace_id)} · {len(spans)} spans · {total / 1e6:.1f} ms · {legend}</div>
<table>{"".join(rows)}</table></body></html>"""
