"""An evaluation's report: JSON for machines, one self-contained HTML file for people, a rich table."""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Report:
    model: str                          # the model's ref (name:vN) or folder
    kind: str                           # causal-lm | classification | generation | speed | harness
    metrics: dict[str, Any]
    dataset: str | None = None
    split: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)      # title -> PNG path
    samples: list[dict[str, Any]] = field(default_factory=list)  # a few predictions to look at
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # more rows to read, by title (the gate's checks)
    id: str | None = None               # the eval record in the registry
    path: str | None = None             # the report folder
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(self.to_json(), indent=2, default=str, ensure_ascii=False))
        (folder / "report.html").write_text(render_html(self), encoding="utf-8")
        return folder / "report.html"


def format_number(value: Any, key: str | None = None) -> str:
    """A number for a table: four significant-ish places below 10 (losses, F1, bits per byte), fewer above (1,242.0
    tokens/s, 439.3 MiB, 74.34 perplexity), thousands separated; anything else as text. A rate (`key` ending in
    per_s) has one decimal whatever its size: a slow decode printed "7.4000" tokens/s beside "429.3"; a size in MiB
    (`_mb`) two below 100 (the table rounds sizes to 3 places, and "4.2580" MiB claimed a place it did not have)."""
    if isinstance(value, float):
        key = key or ""
        digits = (1 if key.endswith("per_s") else (2 if abs(value) < 100 else 1) if key.endswith("_mb")
                  else 4 if abs(value) < 10 else 2 if abs(value) < 100 else 1)
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def figure_base64(fig, dpi: int = 90) -> str:
    """A matplotlib figure as base64 PNG, for embedding in a self-contained page; closes the figure."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(report: Report) -> str:
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(format_number(v, k))}</td></tr>" for k, v in report.metrics.items())
    plots = []
    for title, path in report.plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        plots.append(f'<figure><img alt="{esc(title)}" src="data:image/png;base64,{data}"><figcaption>{esc(title)}</figcaption></figure>')
    def table(title: str, rows: list[dict[str, Any]]) -> str:
        if not rows:
            return ""
        keys = list(dict.fromkeys(k for row in rows for k in row))
        head = "".join(f"<th>{esc(k)}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{esc(format_number(row.get(k, ''), k))}</td>" for k in keys) + "</tr>" for row in rows)
        return f"<h2>{esc(title)}</h2><table><tr>{head}</tr>{body}</table>"

    samples = "".join(table(title, rows) for title, rows in report.tables.items()) + table("Samples", report.samples)
    config = esc(json.dumps(report.config, indent=2, default=str))
    title = f"{report.kind} evaluation of {report.model}"
    where = f" on {report.dataset}" + (f" ({report.split} split)" if report.split else "") if report.dataset else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; }}
th {{ background: #f5f5f5; font-weight: 600; }} figure {{ display: inline-block; margin: 1rem; }} img {{ max-width: 28rem; }}
pre {{ background: #f8f8f8; padding: 1rem; overflow-x: auto; }}
</style></head><body>
<h1>{esc(title)}{esc(where)}</h1>
<p>{esc(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.created_at)))} · eval {esc(report.id or "-")}</p>
<h2>Metrics</h2><table>{rows}</table>
{"<h2>Plots</h2>" + "".join(plots) if plots else ""}
{samples}
<h2>Configuration</h2><pre>{config}</pre>
</body></html>
"""


def metrics_table(report: Report, keys: list[str] | None = None):
    from rich.table import Table

    table = Table(title=f"{report.kind}: {report.model}" + (f" on {report.dataset}" if report.dataset else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in report.metrics.items():
        if keys is None or k in keys:
            table.add_row(k, format_number(v, k))
    return table
