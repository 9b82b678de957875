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
