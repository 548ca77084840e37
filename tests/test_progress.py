"""Progress where no terminal is attached: a log line every 30 s with what is done, the rate
and the time left; nothing for work shorter than that; a bar on a terminal."""

import io

from lakefill import progress as progress_mod
from lakefill.progress import LogLines, progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_line_every_30_seconds_with_the_share_done_and_the_time_left():
    clock, lines = Clock(), []
    bar = LogLines(1000, desc="training 3 network(s)", log=lines.append, clock=clock)
    for _ in range(10):  # 100 steps every 12 s: a line at 36 s, 72 s and 108 s
        clock.now += 12
        bar.set_postfix(network="64x2x16", val_loss="0.1234")
        bar.update(100)
    bar.close()
    assert lines == [
        "training 3 network(s): 300/1,000 steps (30%), network 64x2x16, val_loss 0.1234, 36 s elapsed, about 1 min 24 s left",
        "training 3 network(s): 600/1,000 steps (60%), network 64x2x16, val_loss 0.1234, 1 min 12 s elapsed, about 48 s left",
        "training 3 network(s): 900/1,000 steps (90%), network 64x2x16, val_loss 0.1234, 1 min 48 s elapsed, about 12 s left",
        "training 3 network(s): 1,000/1,000 steps (100%), network 64x2x16, val_loss 0.1234, 2 min 00 s elapsed"]


def test_an_unknown_amount_logs_what_is_done_and_its_rate():
    clock, lines = Clock(), []
    bar = LogLines(0, desc="run r1", unit="row", log=lines.append, clock=clock)
    clock.now = 40
    bar.update(50_000)
    bar.close()  # nothing more done since the last line: no second line
    assert lines == ["run r1: 50,000 rows, 40 s elapsed, 1,250 rows/s"]


def test_work_shorter_than_the_interval_logs_nothing():
    clock, lines = Clock(), []
    bar = LogLines(10, log=lines.append, clock=clock)
    clock.now = 29
    bar.update(10)
    bar.close()
    assert lines == []


def test_a_terminal_gets_a_bar_and_a_log_gets_lines(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    bar = progress(10, log=print)
    assert type(bar).__name__ == "tqdm"
    bar.close()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(progress(10, log=print), LogLines)
    assert progress(10, enabled=False) is None
    monkeypatch.setattr(progress_mod, "EVERY", 5.0)
    assert progress(10).every == 5.0
