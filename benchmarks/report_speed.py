"""How long `lora-grade report` takes to build, and its page to load in Chromium, for a class graded
from the catalogue and for a large class made by repeating its results.

A class is built from the catalogue (tests/catalogue_class.py: complete notebooks, catalogued
bugs, and students who need a look) and graded with `lora-grade autograde`; then the report is
built for it, and for a class of --scale students whose results.json repeats the graded
students'. Each page is opened in Chromium (Playwright, the system's Chromium if there is one)
until its images are loaded. A measurement to report, not a test: a busy machine makes it slower.

    python benchmarks/report_speed.py [--size 40] [--scale 500] [--folder DIR] [--screenshot docs/report.png]

With --folder, the graded class is kept there (and graded again only if its results are missing);
--screenshot saves the page of the graded class, as the README shows it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from catalogue_class import plan_class, repeated, write_class  # noqa: E402


def lora_grade(*args: str, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lora_grader.classgrade", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def load_seconds(page: Path, screenshot: Path | None = None, width: int = 1100) -> float:
    """From navigation until the page and every image on it are loaded."""
    from playwright.sync_api import sync_playwright

    chromium = next((path for name in ("chromium", "chromium-browser", "google-chrome")
                     if (path := shutil.which(name))), None)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": width, "height": 900})
        start = time.perf_counter()
        tab.goto(page.resolve().as_uri(), wait_until="load")
        tab.wait_for_function("[...document.images].every(image => image.complete && image.naturalWidth > 0)")
        seconds = time.perf_counter() - start
        if screenshot:
            readme_screenshot(tab, screenshot)
        browser.close()
    return seconds


def readme_screenshot(tab, path: Path, section: str = "task-02-lora_flops", scale: float = 0.7) -> None:
    """The README's picture, kept small: the page down to the students who need a look, then one
    task's causes, scaled down, in 256 colours."""
    import io

    from PIL import Image

    def box(selector_from: str, selector_to: str) -> dict:
        top, bottom = tab.evaluate(f"""() => [document.querySelector('{selector_from}').getBoundingClientRect().top,
            document.querySelector('{selector_to}').getBoundingClientRect().top].map(y => y + window.scrollY)""")
        return {"x": 0, "y": top, "width": tab.viewport_size["width"], "height": bottom - top}

    next_section = tab.evaluate(f"""() => {{ let e = document.getElementById('{section}').nextElementSibling;
        while (!/^H[23]$/.test(e.tagName)) e = e.nextElementSibling; return e.id; }}""")
    parts = [Image.open(io.BytesIO(tab.screenshot(full_page=True, clip=clip))) for clip in
             (box("body", "#causes"), box(f"#{section}", f"#{next_section}"))]
    picture = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        picture.paste(part, (0, y))
        y += part.height
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.LANCZOS)
    picture.quantize(256).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40, help="students graded (default 40)")
    parser.add_argument("--scale", type=int, default=500, help="students in the repeated class (default 500)")
    parser.add_argument("--folder", type=Path, help="keep the graded class here (reused when already graded)")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the graded class's page here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        course = args.folder or Path(tmp) / "class"
        results = course / "lora_grading" / "results.json"
        if not results.is_file():
            shutil.rmtree(course / "submitted", ignore_errors=True)
            write_class(plan_class(args.size), course / "submitted")
            print(f"lora-grade autograde, {args.size} students: {lora_grade('autograde', '--no-progress', cwd=course):.0f} s",
                  flush=True)
        built = lora_grade("report", cwd=course)
        page = course / "lora_grading" / "report.html"
        loaded = load_seconds(page, args.screenshot)
        graded = len(json.loads(results.read_text(encoding="utf-8"))["students"])
        print(f"{graded:4d} students: report built in {built:.1f} s ({page.stat().st_size / 1e3:.0f} kB), "
              f"loaded in Chromium in {loaded:.2f} s", flush=True)

        large = Path(tmp) / "large"
        (large / "lora_grading").mkdir(parents=True)
        record = repeated(json.loads(results.read_text(encoding="utf-8")), args.scale)
        (large / "lora_grading" / "results.json").write_text(json.dumps(record), encoding="utf-8")
        built = lora_grade("report", cwd=large)
        page = large / "lora_grading" / "report.html"
        loaded = load_seconds(page)
        print(f"{args.scale:4d} students (repeated): report built in {built:.1f} s ({page.stat().st_size / 1e3:.0f} kB), "
              f"loaded in Chromium in {loaded:.2f} s")


if __name__ == "__main__":
    main()
