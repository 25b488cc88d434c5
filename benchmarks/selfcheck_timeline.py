"""Where the seconds of one self-check go: `pytest autograder` on a complete submission, as a
timeline of both processes (the grader, which collects and judges, and the sandbox, which imports
torch, warms up and runs the notebooks side by side), next to `python -c "import torch"`.

    python benchmarks/selfcheck_timeline.py [--sandbox fork|spawn]

A measurement to report, not a test. For a profile of any one process, run it under a sampling
profiler (py-spy record --subprocesses -- python -m pytest autograder ...).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = 'python -c "import torch"'
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from catalogue import complete_submission  # noqa: E402
from lora_grader.checks import NOTEBOOKS  # noqa: E402
from lora_grader.timeline import VARIABLE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox", choices=("fork", "spawn"), default="fork")
    mode = parser.parse_args().sandbox
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "submission"
        folder.mkdir()
        for key, notebook in NOTEBOOKS.items():
            (folder / notebook.filename).write_text(json.dumps(complete_submission(key)))
        start = time.time()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        floor = time.time() - start
        timeline = Path(tmp) / "timeline.txt"
        start = time.time()
        done = subprocess.run([sys.executable, "-m", "pytest", "autograder", "-q", "-p", "no:cacheprovider",
                               "--sandbox", mode, "--notebooks", str(folder)],
                              cwd=ROOT, env=dict(os.environ, **{VARIABLE: str(timeline)}), capture_output=True, text=True)
        end = time.time() - start
        if done.returncode:
            sys.exit(f"the self-check failed:\n{done.stdout[-3000:]}")
        names: dict[str, str] = {}
        print(f"{FLOOR}: {floor:.2f} s, the floor")
        print(f"pytest autograder --sandbox {mode}, as each process marked it (seconds from launch):")
        for line in timeline.read_text().splitlines():
            moment, pid, event = line.split(" ", 2)
            who = names.setdefault(pid, "grader" if not names else "sandbox" if len(names) == 1 else f"worker {len(names) - 1}")
            print(f"{float(moment) - start:8.2f}  {who:9} {event}")
        print(f"{end:8.2f}  {'':9} the process ended ({end / floor:.1f}x the floor)")


if __name__ == "__main__":
    main()
