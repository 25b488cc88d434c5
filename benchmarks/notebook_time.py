"""How long each notebook takes to run top to bottom: the kernel's CPU time and the wall time.

Each notebook (the solutions by default, as a student who solved everything runs them) is executed
by nbclient in a real kernel, one at a time. Before and after every cell the kernel process's CPU
time (user + system, all its threads, from the operating system) is read, so the figures are the
notebook's own work: the kernel's start-up is reported apart, and other processes on a busy
machine do not count, as they do in the wall time. This is a measurement to report, not a test.

    python benchmarks/notebook_time.py                  # every solution notebook
    python benchmarks/notebook_time.py 05 --cells       # one notebook, with its slowest cells
    python benchmarks/notebook_time.py --repeats 3      # the median of three runs
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    startup_cpu: float = 0.0  # the kernel's CPU before the first cell: Python, ipykernel
    wall: float = 0.0  # kernel start to the last cell's end
    cells: list[tuple[str, float, float]] = field(default_factory=list)  # (label, cpu, wall)

    @property
    def cpu(self) -> float:
        return sum(cpu for _, cpu, _ in self.cells)


def _label(cell) -> str:
    grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
    return grade_id or cell.source.strip().splitlines()[0][:40]


class TimedClient(NotebookClient):
    """nbclient's executor, reading the kernel's CPU time around each cell."""

    def __init__(self, notebook, run: Run, **kwargs):
        super().__init__(notebook, **kwargs)
        self.run = run
        self.kernel = None

    def _kernel_cpu(self) -> float:
        if self.kernel is None:  # the kernel process, once nbclient has started it
            self.kernel = psutil.Process(self.km.provisioner.process.pid)
            self.run.startup_cpu = sum(self.kernel.cpu_times()[:2])
        times = self.kernel.cpu_times()
        return times.user + times.system

    async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
        if cell.cell_type != "code":
            return await super().async_execute_cell(cell, cell_index, *args, **kwargs)
        cpu, wall = self._kernel_cpu(), time.perf_counter()
        result = await super().async_execute_cell(cell, cell_index, *args, **kwargs)
        self.run.cells.append((_label(cell), self._kernel_cpu() - cpu, time.perf_counter() - wall))
        return result


def time_notebook(path: Path) -> Run:
    run = Run()
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:  # what a notebook writes stays out of the repository
        start = time.perf_counter()
        TimedClient(notebook, run, timeout=600, kernel_name="python3",
                    resources={"metadata": {"path": scratch}}).execute()
        run.wall = time.perf_counter() - start
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook numbers, e.g. 05 (default: all)")
    parser.add_argument("--folder", type=Path, default=ROOT / "solutions" / "lora")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cells", action="store_true", help="also list the cells that took 0.5 s of CPU or more")
    args = parser.parse_args()
    paths = [p for p in sorted(args.folder.glob("*.ipynb")) if not args.notebooks or p.name[:2] in args.notebooks]

    print(f"load average before: {' '.join(f'{x:.1f}' for x in psutil.getloadavg())}; "
          f"{args.repeats} run(s) each, medians")
    print(f"{'notebook':<28}{'cells CPU':>10}{'start-up CPU':>14}{'wall':>8}")
    for path in paths:
        runs = [time_notebook(path) for _ in range(args.repeats)]
        median = lambda values: statistics.median(values)  # noqa: E731
        print(f"{path.stem:<28}{median([r.cpu for r in runs]):>9.1f}s{median([r.startup_cpu for r in runs]):>13.1f}s"
              f"{median([r.wall for r in runs]):>7.1f}s")
        if args.cells:
            for index, (label, _, _) in enumerate(runs[0].cells):
                cpu = median([r.cells[index][1] for r in runs])
                wall = median([r.cells[index][2] for r in runs])
                if cpu >= 0.5:
                    print(f"    {label:<36}{cpu:>6.1f}s CPU{wall:>7.1f}s wall")
    print(f"load average after:  {' '.join(f'{x:.1f}' for x in psutil.getloadavg())}")


if __name__ == "__main__":
    main()
