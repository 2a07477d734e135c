"""The README's screenshots of a finished run, taken in headless Chromium (Debian's ``chromium`` package):
``affcons view RUN_DIR`` (xy layout) -> ``docs/viewer.png``, ``affcons report RUN_DIR`` -> ``docs/report.png``.

    .venv/bin/python scripts/screenshots.py runs/demo            # after .venv/bin/affcons run -c demo
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser import NEUROGLANCER_READY, HeadlessChromium, find_chromium, settled_screenshot  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where the PNGs go (default docs/)")
    args = parser.parse_args()
    executable = find_chromium()
    if executable is None:
        print("no Chromium found: apt-get install -y chromium (or set AFFCONS_CHROMIUM)", file=sys.stderr)
        return 2
    affcons = [sys.executable, "-m", "affcons.cli"]
    view = [*affcons, "view", str(args.run_dir), "--layout", "xy", "--serve-seconds", "300"]
    viewer = subprocess.Popen(view, stdout=subprocess.PIPE, text=True)
    try:
        url = viewer.stdout.readline().strip().removeprefix("neuroglancer: ")
        with HeadlessChromium(executable, width=1000, height=700, timeout_s=240) as browser:
            browser.open(url)
            settled_screenshot(browser, NEUROGLANCER_READY, "the run's layers to render")
            browser.screenshot(args.docs / "viewer.png")
            with tempfile.TemporaryDirectory() as scratch:
                report = Path(scratch) / "report.html"
                subprocess.run([*affcons, "report", str(args.run_dir), "--out", str(report)], check=True)
                browser.open(report.as_uri())
                browser.wait_for("Array.from(document.images).every(i => i.complete)", "the report's images")
                browser.evaluate("document.getElementById('metrics').scrollIntoView() || true")  # the plots
                browser.screenshot(args.docs / "report.png")
    finally:
        viewer.terminate()
        viewer.wait(30)
    print(f"wrote {args.docs / 'viewer.png'} and {args.docs / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
