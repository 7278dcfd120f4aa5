"""A privacy audit's report and how it is shown: rich tables for the terminal, one self-contained HTML page with the
canary exposure plot (exposure against times planted) embedded as a PNG."""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from typing import Any

from llmkit.eval.report import figure_base64


@dataclass
class PrivacyReport:
    model: str
    data: str
    pii: dict[str, Any]            # generations, with_pii, rate, by_type, in_training, examples
    memorization: dict[str, Any]   # prefix/suffix tokens, per split: windows, extracted, rate, mean match; examples
    canaries: dict[str, Any] | None  # candidates, threshold, planted, references
    flagged: list[str]
    reasons: list[str]
    seconds: float
    out: str | None = None
    warnings: list[str] = field(default_factory=list)
    id: str | None = None    # the registered eval record, for a registered model
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summary_table(report: PrivacyReport):
    from rich.table import Table

    pii, mem = report.pii, report.memorization
    table = Table(title=f"Privacy audit of {report.model} on {report.data}")
    table.add_column("probe")
    table.add_column("result", overflow="fold")
    types = ", ".join(f"{t} {v['matches']} ({v['in_training']} from training)" for t, v in pii["by_type"].items()) or "none"
    table.add_row("PII in generations", f"{pii['with_pii']} of {pii['generations']} generations ({pii['tokens_each']} tokens, "
                  f"T={pii['temperature']}); matches: {types}")
    for name in ("train", "heldout"):
        m = mem[name]
        table.add_row(f"verbatim continuation, {m['split']}",
                      f"{m['extracted']} of {m['windows']} windows ({m['rate']:.3f}); on average {m['mean_match']:.1%} of the "
                      f"{mem['suffix_tokens']} tokens after {mem['prefix_tokens']} reproduced")  # a share: 0.006 read as tokens
    if report.canaries:
        c = report.canaries
        planted = ", ".join(f"x{r['repeats']}: {r['exposure']:.1f}" for r in c["planted"])
        refs = [r["exposure"] for r in c["references"]]
        table.add_row("canary exposure (bits)", f"planted {planted}; references mean {sum(refs) / max(1, len(refs)):.1f}, "
                      f"max {max(refs, default=0):.1f} (of {c['planted'][0]['max_exposure'] if c['planted'] else '-'})")
    else:
        table.add_row("canary exposure", "no canaries: pretrain with --canaries N to measure exposure")
    verdict = "[red]FLAGGED[/red] " + "; ".join(report.reasons) if report.reasons else "[green]nothing flagged[/green]"
    table.add_row("verdict", verdict)
    return table


def canary_table(report: PrivacyReport):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"Canaries: rank of the true secret among {report.canaries['candidates']} random ones")
    for col in ("secret", "planted", "rank", "exposure", "flagged"):
        table.add_column(col, justify="left" if col == "secret" else "right")
    for r in report.canaries["planted"] + report.canaries["references"]:
        table.add_row(Text(r["secret"]), str(r["repeats"]) if r["repeats"] else "never", str(r["rank"]), f"{r['exposure']:.2f}",
                      "[red]yes[/red]" if r.get("flagged") else "")
    return table


def exposure_png(report: PrivacyReport) -> str:
    """Exposure against times planted (references at 0), with the random level and the maximum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmkit.data.figures import use_cjk_font

    use_cjk_font()  # CJK labels in a CJK font, not boxes

    c = report.canaries
    rows = c["planted"] + c["references"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [max(r["repeats"], 0.5) for r in rows]  # references plotted at 0.5 on the log axis
    ax.scatter(xs, [r["exposure"] for r in rows], c=["#c33" if r.get("flagged") else "#36c" for r in rows])
    top = rows[0]["max_exposure"]
    ax.axhline(top, color="#888", ls="--", lw=1, label=f"maximum ({top:.1f} bits: ranked first)")
    ax.axhline(c["threshold"], color="#c33", ls=":", lw=1, label=f"flag threshold ({c['threshold']} bits)")
    ax.set_xscale("log")
    ax.set_xlabel("times planted (references, never planted, at 0.5)")
    ax.set_ylabel("exposure (bits)")
    ax.set_ylim(0, top + 0.8)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    return figure_base64(fig)


def html_report(report: PrivacyReport) -> str:
    esc = html.escape
    pii, mem = report.pii, report.memorization
    pii_rows = "".join(f"<tr><td>{esc(t)}</td><td>{v['matches']}</td><td>{v['in_training']}</td></tr>"
                       for t, v in pii["by_type"].items()) or "<tr><td colspan=3>no PII found</td></tr>"
    pii_examples = "".join(
        f"<tr><td>{esc(e['type'])}</td><td><code>{esc(e['text'])}</code></td><td>{'yes' if e['in_training'] else 'no'}</td>"
        f"<td>{esc(e['context'])}</td></tr>" for e in pii["examples"])
    mem_rows = "".join(
        f"<tr><td>{esc(mem[n]['split'])}</td><td>{mem[n]['windows']}</td><td>{mem[n]['extracted']}</td>"
        f"<td>{mem[n]['rate']:.3f}</td><td>{mem[n]['mean_match']:.1%}</td></tr>" for n in ("train", "heldout"))
    mem_examples = "".join(f"<tr><td>{esc(e['prefix'])}</td><td><mark>{esc(e['continuation'])}</mark></td></tr>"
                           for e in mem["examples"])
    if report.canaries:
        c = report.canaries
        rows = "".join(
            f"<tr class={'flag' if r.get('flagged') else 'ok'}><td><code>{esc(r['secret'])}</code></td>"
            f"<td>{r['repeats'] or 'never'}</td><td>{r['rank']}</td><td>{r['exposure']:.2f}</td></tr>"
            for r in c["planted"] + c["references"])
        canary_html = (f"<p>Each true secret ranked among {c['candidates']} random ones by the model's likelihood; exposure = "
                       f"log2(candidates + 1) - log2(rank). A secret the model never saw scores about 1 bit on average; the "
                       f"never-planted references show the spread (letter secrets that happen to read like words score "
                       f"higher in a model of text).</p>"
                       f'<img alt="exposure against times planted" src="data:image/png;base64,{exposure_png(report)}">'
                       f"<table><tr><th>secret</th><th>planted</th><th>rank</th><th>exposure (bits)</th></tr>{rows}</table>")
    else:
        canary_html = "<p>No canaries: pretrain with <code>--canaries N</code> to measure exposure.</p>"
    verdict = ("<p class=flag>FLAGGED: " + esc("; ".join(report.reasons)) + "</p>") if report.reasons else "<p class=ok>Nothing flagged.</p>"
    warnings = "".join(f"<p class=warn>warning: {esc(w)}</p>" for w in report.warnings)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llmkit privacy audit: {esc(report.model)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}tr.flag td,p.flag{{background:#fdd}}
p.ok{{color:#070}}.warn{{color:#a60}}mark{{background:#fe9}}</style></head><body>
<h1>Privacy audit: {esc(report.model)}</h1>
<p>Training data {esc(report.data)}; {report.seconds}s.</p>{verdict}{warnings}
<h2>PII in {pii['generations']} generations</h2>
<p>{pii['with_pii']} generations ({pii['rate']:.3f}) hold PII; {pii['in_training']} of {pii['matches']} matches occur in the
train records. {pii['tokens_each']} tokens each at temperature {pii['temperature']}.</p>
<table><tr><th>type</th><th>matches</th><th>in training data</th></tr>{pii_rows}</table>
{f"<table><tr><th>type</th><th>match</th><th>in training</th><th>context</th></tr>{pii_examples}</table>" if pii_examples else ""}
<h2>Memorization</h2>
<p>{mem['prefix_tokens']} tokens of a record as the prompt; extracted = greedy decoding reproduces the next
{mem['suffix_tokens']} verbatim. Held out ({esc(mem['heldout_split'])}) is the baseline.</p>
<table><tr><th>split</th><th>windows</th><th>extracted</th><th>rate</th><th>mean share matched</th></tr>{mem_rows}</table>
{f"<table><tr><th>prompt (training text)</th><th>continuation reproduced</th></tr>{mem_examples}</table>" if mem_examples else ""}
<h2>Canaries</h2>{canary_html}
</body></html>
"""
