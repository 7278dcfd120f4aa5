"""An explanation shown three ways: coloured tokens in the terminal (rich), one self-contained HTML
file (inline CSS, the attention heat map as an embedded PNG) and JSON (Explanation.to_dict)."""

from __future__ import annotations

import html
from pathlib import Path

from rich.text import Text

from llmkit.eval.report import figure_base64
from llmkit.explain import Explanation


def _rgb(score: float, signed: bool = True) -> tuple[int, int, int]:
    """White at 0, green for positive (supports the target), red for negative, by magnitude; blue by magnitude for a
    score without direction (attention)."""
    m = min(1.0, abs(score))
    if not signed:
        return int(255 - 175 * m), int(255 - 115 * m), 255
    if score >= 0:
        return int(255 - 175 * m), int(255 - 55 * m), int(255 - 175 * m)
    return int(255 - 35 * m), int(255 - 175 * m), int(255 - 175 * m)


def _visible(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t")


def _signed(exp: Explanation) -> bool:
    """Attention weights are never negative: they say where the model looks, not which way a token pushes."""
    return exp.method != "attention"


def legend(exp: Explanation) -> str:
    if not _signed(exp):
        return ("blue: the share of attention rollout each token gets, the darker the more; it has no direction "
                "(it does not say whether a token raises or lowers the target)")
    return "green: the token raises the target; red: it lowers it (the darker, the more; normalised by the largest)"


def terminal_text(exp: Explanation) -> Text:
    text = Text()
    for token, score, special in zip(exp.tokens, exp.normalized, exp.special, strict=True):
        if special:
            text.append(_visible(token), style="dim italic")
        else:
            r, g, b = _rgb(score, _signed(exp))
            text.append(_visible(token), style=f"black on rgb({r},{g},{b})")
        text.append(" " if exp.kind == "classifier" else "")
    return text


def summary_lines(exp: Explanation) -> list[str]:
    what = {"probability": "p", "log_probability": "log p"}[exp.quantity]
    lines = [f"{exp.model} ({exp.kind}), method {exp.method}: target '{_visible(exp.target)}', {what} = {exp.value:.4f}"
             + (f" (p = {exp.probability:.4g})" if exp.quantity == "log_probability" else ""), legend(exp)]
    if exp.convergence_delta is not None:
        lines.append(f"IG convergence delta {exp.convergence_delta:.4g} (f(x) - f(baseline) = {exp.value - exp.baseline_value:.4g}, "
                     f"{exp.steps} steps)")
    k = exp.faithfulness["k"]
    # What the two numbers mean, in the target's own unit: a deletion that costs more than random ones = the ranking
    # found what matters. Either can be negative (deleting tokens raised the target), so say "raises" then.
    top, rand = _moves(exp.aopc, f"the {what}"), _moves(exp.aopc_random, "it")
    found = exp.faithfulness.get("verdict") or ("faithful" if exp.aopc > exp.aopc_random else "not_better")
    if found == "no_effect":
        lines.append(f"faithfulness: deleting up to {k} tokens, the top ones or random ones, moves the {what} by "
                     f"{exp.faithfulness['max_move']:.4f} at most, under 1 % of p: the prediction hardly depends on "
                     "these tokens, so there is no ranking to trust")
    elif k > 1:
        verdict = (f"{exp.aopc - exp.aopc_random:.4f} more than random, so the ranking is faithful"
                   if found == "faithful" else "no more than random, so do not trust this ranking")
        lines.append(f"faithfulness: deleting the top 1-{k} tokens {top} on average (deletion AOPC), "
                     f"deleting random ones {rand}: {verdict}")
    else:
        lines.append(f"faithfulness: deleting the top token {top}, a random one {rand}")
    lines.append(f"{exp.seconds:.2f} s attribution, {exp.seconds_total:.2f} s with faithfulness")
    return lines


def _moves(drop: float, subject: str) -> str:
    """A deletion's mean drop of the target, in words: 'lowers the log p by 0.4100' or 'raises it by 2.4179'."""
    return f"lowers {subject} by {drop:.4f}" if drop >= 0 else f"raises {subject} by {-drop:.4f}"


def _attention_png(exp: Explanation) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmkit.data.figures import use_cjk_font

    use_cjk_font()  # CJK labels in a CJK font, not boxes

    n = len(exp.tokens)
    labels = [_visible(t).replace(" ", "␣") or "·" for t in exp.tokens]
    last = exp.attentions[-1].mean(0)[:n, :n]
    size = max(4.0, min(14.0, 0.28 * n + 2))
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, matrix, title in ((axes[0], exp.rollout[:n, :n], "attention rollout"),
                              (axes[1], last, f"last layer (mean of {exp.attentions.shape[1]} heads)")):
        im = ax.imshow(matrix, cmap="viridis")
        ax.set_title(title)
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
        ax.set_xlabel("attended token")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return figure_base64(fig)


def html_report(exp: Explanation) -> str:
    spans = []
    for token, score, raw, special in zip(exp.tokens, exp.normalized, exp.scores, exp.special, strict=True):
        shown = html.escape(_visible(token)) or "&middot;"
        if special:
            spans.append(f'<span class="tok special" title="special token, not scored">{shown}</span>')
        else:
            r, g, b = _rgb(score, _signed(exp))
            spans.append(f'<span class="tok" style="background:rgb({r},{g},{b})" title="{raw:.4g}">{shown}</span>')
    sep = " " if exp.kind == "classifier" else ""
    rows = "".join(f"<tr><td><code>{html.escape(_visible(t))}</code></td><td>{s:.4g}</td></tr>"
                   for t, s, sp in zip(exp.tokens, exp.scores, exp.special, strict=True) if not sp)
    image = ""
    if exp.attentions is not None:
        image = f'<h2>Attention</h2><img alt="attention heat map" src="data:image/png;base64,{_attention_png(exp)}">'
    warnings = "".join(f"<p class=warn>warning: {html.escape(w)}</p>" for w in exp.warnings)
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(exp))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llmkit explain: {html.escape(exp.model)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }}
.tokens {{ font-family: ui-monospace, monospace; font-size: 1.1em; line-height: 2.2; white-space: pre-wrap; }}
.tok {{ padding: 2px 1px; border-radius: 3px; }}
.special {{ color: #888; font-style: italic; }}
.warn {{ color: #a60; }}
table {{ border-collapse: collapse; }} td {{ padding: 2px 8px; border-bottom: 1px solid #eee; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Why '{html.escape(_visible(exp.target))}'?</h1>
<ul>{summary}</ul>{warnings}
<div class="tokens">{sep.join(spans)}</div>
<h2>Scores</h2><table><tr><th>token</th><th>{html.escape(exp.method)} score</th></tr>{rows}</table>
{image}
</body></html>
"""


def write_html(exp: Explanation, path: str | Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(exp), encoding="utf-8")
    return path
