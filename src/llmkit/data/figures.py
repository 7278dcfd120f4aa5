"""Fonts for every plot llmkit draws: Chinese, Japanese and Korean labels (a classifier's 唐诗/宋词, a bias group's
name) drawn in a CJK font found on the machine, not as empty boxes with a "Glyph missing" warning per character.

matplotlib (3.6 and later) falls back glyph by glyph along `font.family`, so the list is its default font, then
the CJK fonts it can find. Its font list is cached from the first run: a font installed since is looked for
among the system's font files too. With none installed, the boxes stay and the warnings are silenced;
`llmkit doctor` says which font the plots use (none: install one, e.g. Debian's fonts-noto-cjk)."""

from __future__ import annotations

import functools
import re
import warnings

# Family names, commonest first: Linux packages (Noto, Source Han, WenQuanYi), then macOS and Windows.
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Micro Hei",
                "WenQuanYi Zen Hei", "Droid Sans Fallback", "AR PL UMing CN", "PingFang SC", "Hiragino Sans GB",
                "Heiti SC", "Microsoft YaHei", "SimHei", "Noto Sans CJK JP", "Noto Sans CJK KR")
_CJK_FILES = re.compile(r"(notosanscjk|notoserifcjk|sourcehansans|wqy|droidsansfallback|uming|ukai|pingfang|msyh|simhei)",
                        re.IGNORECASE)


@functools.cache
def cjk_font() -> str | None:
    """The CJK family plots fall back to (set up on the first call), or None when the machine has none."""
    import matplotlib
    from matplotlib import font_manager

    known = {f.name for f in font_manager.fontManager.ttflist}
    found = next((name for name in CJK_FAMILIES if name in known), None)
    if found is None:  # installed after matplotlib cached its font list
        for path in font_manager.findSystemFonts():
            if _CJK_FILES.search(path):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        known = {f.name for f in font_manager.fontManager.ttflist}
        found = next((name for name in CJK_FAMILIES if name in known), None)
    if found is not None:
        families = list(matplotlib.rcParams["font.family"])
        if families == ["sans-serif"]:  # the default: name its first font, so the CJK one only fills gaps
            families = [matplotlib.rcParams["font.sans-serif"][0]]
        matplotlib.rcParams["font.family"] = [*families, found]
    return found


def use_cjk_font() -> str | None:
    """Called by every function that draws, before it draws: `cjk_font` set up, and matplotlib's warning per
    missing glyph silenced (with no CJK font the characters are boxes; a warning per character and figure says
    nothing more). The filter is put back in front on each call: a caller's catch_warnings may have reset it."""
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
    return cjk_font()
