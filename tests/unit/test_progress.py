"""Progress in a log: one plain line every few seconds instead of a bar redrawn with carriage returns."""

from __future__ import annotations

import io

from ldmkit.progress import ProgressLines, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_printed_once_per_interval_and_at_the_end():
    out, clock = io.StringIO(), FakeClock()
    bar = ProgressLines(total=1000, desc="train autoencoder", unit="step", file=out, interval=10.0, clock=clock)
    for _ in range(1000):  # 1000 updates over 25 s: lines at 10 s and 20 s, and one when closed
        clock.now += 0.025
        bar.update(1)
        bar.set_postfix({"loss": "0.125"}, refresh=False)
    bar.close()
    bar.close()  # closing twice prints nothing more
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 3
    assert lines[0].startswith("train autoencoder: 400/1000 step (40%), 40 step/s, loss=0.125")
    assert lines[-1].startswith("train autoencoder: 1000/1000 step (100%)")


def test_a_resumed_count_reports_the_rate_of_this_process_only():
    out, clock = io.StringIO(), FakeClock()
    bar = ProgressLines(total=100, initial=50, desc="d", file=out, interval=1.0, clock=clock)
    clock.now = 2.0
    bar.update(10)
    assert out.getvalue().startswith("d: 60/100 it (60%), 5 it/s")


def test_a_stream_that_is_not_a_terminal_gets_lines():
    assert isinstance(progress_bar(total=3, file=io.StringIO()), ProgressLines)
