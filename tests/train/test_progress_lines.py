"""Training progress where the output is not a terminal (a log file, CI): plain lines as it goes, one at the end."""

from __future__ import annotations

import io

from rich.console import Console

from llmkit.train.loop import ProgressLines, progress_bar


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=80), out


def test_a_log_gets_lines_with_rate_and_eta_and_the_last_evaluation_at_the_end():
    console, out = _console()
    bar = progress_bar(console)
    assert isinstance(bar, ProgressLines)
    bar.every_s = 0.0  # a line on every update
    with bar:
        task = bar.add_task("pretrain", total=4, completed=0, loss=float("nan"), tok_s=0.0, val="")
        for step in range(1, 5):
            bar.update(task, completed=step, loss=2.0 / step, tok_s=1234.5)
        bar.update(task, val="val_loss 0.4321")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("pretrain step 1/4 (25 %), loss 2.0000, 1,234 tok/s, eta ")
    assert lines[-1] == "pretrain step 4/4 (100 %), loss 0.5000, 1,234 tok/s, val_loss 0.4321"
    assert len(lines) == 5


def test_a_line_longer_than_the_width_stays_one_line():
    console, out = _console()
    with ProgressLines(console, every_s=3600) as bar:
        bar.add_task("sft " + "x" * 80, total=1, completed=0, loss=float("nan"), tok_s=0.0, val="")
        bar.update(0, completed=1, loss=1.0, tok_s=1.0)
    assert len(out.getvalue().splitlines()) == 1 and len(out.getvalue()) > 120


def test_between_lines_it_waits_and_the_end_is_said_once():
    console, out = _console()
    with ProgressLines(console, every_s=3600) as bar:
        task = bar.add_task("sft", total=10, completed=2, loss=float("nan"), tok_s=0.0, val="")
        for step in range(3, 11):
            bar.update(task, completed=step, loss=1.0, tok_s=10.0)
    assert out.getvalue().splitlines() == ["sft step 10/10 (100 %), loss 1.0000, 10 tok/s"]


def test_a_terminal_keeps_the_live_bar():
    assert not isinstance(progress_bar(Console(file=io.StringIO(), force_terminal=True)), ProgressLines)
