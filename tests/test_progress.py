"""What a person watching a run reads: the step lines of train.log and stdout, and the bar."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

from hyperp.train.trainer import train
from support import subprocess_env
from training import config


def step_lines(run_dir) -> dict[int, str]:
    lines = (run_dir / "train.log").read_text().splitlines()
    return {int(m.group(1)): line for line in lines if (m := re.match(r"step (\d+)/", line))}


def eta_seconds(line: str) -> int:
    minutes, seconds = re.search(r"eta (\d+)m(\d+)s", line).groups()
    return 60 * int(minutes) + int(seconds)


def test_first_line_after_a_start_and_after_a_resume_has_an_eta(corpus, tmp_path):
    # 400 planned steps of a few milliseconds each: the eta is seconds, never 0m00s.
    run = config(corpus, **{"train.steps": 400, "train.checkpoint_every": 0})
    assert train(run, tmp_path / "run", stop_after=2).status == "interrupted"
    assert eta_seconds(step_lines(tmp_path / "run")[1]) > 0
    assert train(run, tmp_path / "run", stop_after=4).status == "interrupted"
    assert eta_seconds(step_lines(tmp_path / "run")[3]) > 0  # the first step after the resume


def test_validation_on_its_own_line_a_finished_line_that_says_what_it_averages(corpus, tmp_path):
    assert train(config(corpus), tmp_path / "run").status == "finished"  # eval every 4 of 8
    lines = step_lines(tmp_path / "run")
    assert sorted(lines) == list(range(1, 9))
    measured = [step for step, line in lines.items() if " | val " in line]
    assert measured == [4, 8]  # not repeated on the lines after step 4 as if new
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    finished = [line for line in log if line.startswith("finished:")]
    assert len(finished) == 1
    assert "(mean of the last 8 steps)" in finished[0] and "(step 8)" in finished[0]
    precision = [line for line in log if "Newton-Schulz" in line]
    assert len(precision) == 1 and precision[0].count("Newton-Schulz") == 1


CHILD = """
import sys, pathlib
from hyperp.train.sinks import RunLog
log = RunLog(pathlib.Path(sys.argv[1]), total_steps=5, start_step=0, progress=True)
log.begin(0)
for step in range(1, 6):
    log.step(step, {"lr": 0.01, "tokens_per_s": 100.0}, 5.0)
log.info("done")
log.close()
"""


def terminal_output(tmp_path, columns: int) -> str:
    """What RunLog prints on a pseudo-terminal that reports ``columns`` columns."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / f"train-{columns}.log")],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=subprocess_env(),
    )
    os.close(follower)
    output, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif child.poll() is not None:
            break
    child.wait(timeout=60)
    os.close(leader)
    assert child.returncode == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


def test_a_terminal_without_columns_gets_plain_lines(tmp_path):
    narrow = terminal_output(tmp_path, columns=0)
    assert "step 5/5 | loss 5.0000" in narrow and "done" in narrow
    # Positive control: a terminal with room draws the bar instead of the plain lines.
    wide = terminal_output(tmp_path, columns=100)
    assert "5/5" in wide and "step 5/5 |" not in wide and "done" in wide
