"""The live progress line: drawn only on a terminal, from /proc, while a run lasts."""

from __future__ import annotations

import io
import os
import threading

from bench.progress import LiveLine, RunProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Recording(LiveLine):
    def __init__(self, stream: io.StringIO) -> None:
        super().__init__(stream)
        self.shown: list[str] = []
        self.drawn = threading.Event()

    def show(self, text: str) -> None:
        super().show(text)
        self.shown.append(text)
        self.drawn.set()


def test_nothing_is_drawn_when_not_a_terminal() -> None:
    stream = io.StringIO()
    line = LiveLine(stream)
    line.show("run 1/3 fastgw")
    line.clear()
    assert not line.enabled and stream.getvalue() == ""


def test_a_shorter_line_overwrites_a_longer_one_and_clear_erases_it() -> None:
    stream = Terminal()
    line = LiveLine(stream)
    line.show("a long first line")
    line.show("short")
    assert stream.getvalue().endswith("\rshort" + " " * (len("a long first line") - 5))
    line.clear()
    assert stream.getvalue().endswith("\r")


def test_run_progress_shows_cpu_memory_and_requests_of_the_watched_tree() -> None:
    line = Recording(Terminal())
    with RunProgress("run 1/1 fastgw", 10.0, os.getpid(), completed=lambda: 1234, line=line):
        assert line.drawn.wait(timeout=5.0), "no progress line within 5 s"
    text = line.shown[0]
    assert text.startswith("run 1/1 fastgw") and "/10 s" in text
    assert "1,234 req" in text and "% CPU" in text and " MB" in text
