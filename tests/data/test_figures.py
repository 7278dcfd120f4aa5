"""Plots with Chinese labels: drawn in a CJK font the machine has, and never a warning per missing glyph."""

from __future__ import annotations

import warnings

from llmkit.data.figures import CJK_FAMILIES, cjk_font, use_cjk_font


def test_chinese_labels_draw_without_a_warning_per_character(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    found = cjk_font()
    assert found is None or found in CJK_FAMILIES
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"Glyph")  # each missing character warned, flooding the terminal
        use_cjk_font()  # as every plotting function does before it draws
        fig = Figure(figsize=(3, 2))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.bar(["唐诗", "宋词", "spam"], [1, 2, 3])
        ax.set_title("标签")
        fig.savefig(tmp_path / "labels.png")
    assert (tmp_path / "labels.png").stat().st_size > 1000


def test_the_font_chosen_holds_chinese_characters():
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    found = cjk_font()
    if found is None:  # a machine without any CJK font: doctor says so (tested in the CLI tests)
        return
    font = FT2Font(font_manager.findfont(font_manager.FontProperties(family=found), fallback_to_default=False))
    assert all(font.get_char_index(ord(c)) for c in "唐诗宋词标签")
