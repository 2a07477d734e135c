"""Headless Chromium for tests: load a page, wait for a JavaScript condition, take a screenshot, measure pixels.

Debian's ``chromium`` package (``apt-get install -y chromium``) is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file descriptors 3 and 4), so no webdriver and
no Python package beyond the standard library and Pillow is needed. WebGL (neuroglancer) runs on SwiftShader, the
CPU renderer bundled with Chromium. Every browser gets a fresh profile directory and is killed on exit.

Use the ``chromium`` fixture (import it into the test module): it skips the test, with the reason, when no browser
is installed.
"""

import base64
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # software WebGL: without it Chromium >= 137 gives neuroglancer no WebGL context
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
    "about:blank",
)


#: True once a neuroglancer page has its viewer and considers it ready (all visible chunks requested).
NEUROGLANCER_READY = "window.viewer !== undefined && viewer.isReady()"


def find_chromium() -> str | None:
    """The Chromium executable: ``$AFFCONS_CHROMIUM``, else ``/usr/bin/chromium`` or ``chromium`` on PATH."""
    for candidate in (os.environ.get("AFFCONS_CHROMIUM"), "/usr/bin/chromium", "chromium"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


class BrowserError(RuntimeError):
    """The browser died, answered with a protocol error, or a page did not get ready in time."""


class HeadlessChromium:
    """One headless Chromium with one page of ``width`` x ``height`` CSS pixels (device scale 1)."""

    def __init__(self, executable: str, width: int = 1280, height: int = 800, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="affcons-chromium-", ignore_cleanup_errors=True)
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_pipes():  # in the child: the browser reads commands on fd 3 and writes answers on fd 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_read, from_browser_write)]
            for target, fd in zip((3, 4), high):
                os.dup2(fd, target, inheritable=True)

        self._log = open(Path(self._profile.name) / "chromium.log", "w+b")
        self._process = subprocess.Popen(
            [
                executable,
                *CHROMIUM_FLAGS[:-1],
                f"--window-size={width},{height}",
                f"--user-data-dir={self._profile.name}",
                CHROMIUM_FLAGS[-1],
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            close_fds=False,  # Python's own descriptors are not inheritable; only fds 3 and 4 are passed on
            preexec_fn=wire_pipes,
            start_new_session=True,  # its own process group, so close() ends the helper processes too
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self._session = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=30)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self._log.close()
        self._profile.cleanup()

    def log_tail(self, characters: int = 2000) -> str:
        """The end of the browser's own output (for failure messages)."""
        self._log.flush()
        return (Path(self._profile.name) / "chromium.log").read_bytes()[-characters:].decode(errors="replace")

    def call(self, method: str, **params):
        """Send one DevTools command (to the page once attached) and return its result; events are dropped."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            while b"\0" not in self._buffer:
                if time.monotonic() > deadline:
                    raise BrowserError(f"no answer to {method} in {self.timeout_s} s")
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise BrowserError(f"the browser exited during {method}: {self.log_tail()}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer["result"]

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait until its document has loaded."""
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", f"{url} to load")

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page (a thrown exception is a BrowserError)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')} {result['result']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float | None = None, poll_s: float = 0.25) -> None:
        """Poll ``expression`` until it is truthy; after ``timeout_s`` (default: the browser's) a BrowserError."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {what} ({expression})")
            time.sleep(poll_s)

    def screenshot(self, path: Path | None = None) -> np.ndarray:
        """The page as an RGB array ``(height, width, 3)`` uint8; also written to ``path`` as PNG when given."""
        from PIL import Image

        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        if path is not None:
            Path(path).write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def settled_screenshot(
    browser: HeadlessChromium, ready: str, what: str, timeout_s: float | None = None, interval_s: float = 0.5
) -> np.ndarray:
    """The page once ``ready`` (JavaScript) is true and two screenshots ``interval_s`` apart are identical.

    For pages that keep loading after their document (neuroglancer fetches chunks and redraws); a BrowserError
    after ``timeout_s`` (default: the browser's).
    """
    deadline = time.monotonic() + (browser.timeout_s if timeout_s is None else timeout_s)
    previous = None
    while True:
        if browser.evaluate(ready):
            image = browser.screenshot()
            if previous is not None and np.array_equal(image, previous):
                return image
            previous = image
        elif time.monotonic() > deadline:
            raise BrowserError(f"timed out waiting for {what} ({ready})")
        if time.monotonic() > deadline:
            raise BrowserError(f"{what}: the page kept changing for {timeout_s or browser.timeout_s} s")
        time.sleep(interval_s)


def element_box(browser: HeadlessChromium, selector: str) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` in screenshot pixels of the first element matching the CSS ``selector``."""
    box = browser.evaluate(
        f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
        " return [r.top, r.left, r.bottom, r.right]; })()"
    )
    return tuple(int(round(v)) for v in box)


def region_stats(image: np.ndarray, box: tuple[int, int, int, int]) -> dict:
    """Pixel statistics of ``image[top:bottom, left:right]``: distinct grey levels, std and non-black fraction."""
    top, left, bottom, right = box
    region = image[top:bottom, left:right].astype(np.float64)
    grey = region.mean(axis=2)
    return {
        "pixels": int(grey.size),
        "distinct_levels": int(np.unique(np.round(grey)).size),
        "std": float(grey.std()),
        "non_black_fraction": float((grey > 8).mean()),
    }


@pytest.fixture
def chromium():
    """A started :class:`HeadlessChromium`; the test is skipped with the reason when no Chromium is installed."""
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium found (/usr/bin/chromium, chromium on PATH or $AFFCONS_CHROMIUM): apt-get install chromium"
        )
    with HeadlessChromium(executable) as browser:
        yield browser
