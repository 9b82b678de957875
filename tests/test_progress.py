"""The progress bar as a log file or a pipe receives it."""

import subprocess
import sys

SCRIPT = """
from vlstack.progress import progress_bar
with progress_bar() as progress:
    task = progress.add_task("finetune: general", total=2)
    progress.update(task, advance=2, status="loss 0.2731 54 samples/s 5488 tok/s")
"""


def test_a_piped_bar_keeps_its_status_on_one_line():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if "finetune: general" in line)
    assert "2/2 loss 0.2731 54 samples/s 5488 tok/s" in line and "ETA" in line, out


SLOW_LOOP = """
import time
from vlstack import progress as module
module.LOG_INTERVAL = 0.05
with module.progress_bar() as progress:
    for _ in progress.track(range(3), description="slow loop"):
        time.sleep(0.2)
"""


def test_a_piped_bar_prints_while_its_loop_runs():
    """Rich alone draws a piped bar once, when the loop ends; a log shows it as it moves, not only at the end."""
    out = subprocess.run([sys.executable, "-c", SLOW_LOOP], capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if "slow loop" in line]
    assert len(lines) >= 3 and any("/3" in line and "3/3" not in line for line in lines), out
