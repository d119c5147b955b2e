"""The shift report as a browser shows it: headless Chromium (Debian package ``chromium``).

``screenshot`` renders the HTML to a PNG, ``dump_dom`` returns the DOM after rendering and
``page_figures`` reads the figures the page shows (elements with an id and ``data-*``).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from matplotlib import image as mpimg

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                  "--no-first-run", "--disable-dev-shm-usage", "--force-device-scale-factor=1")


class ChromiumError(RuntimeError):
    """Chromium is missing or did not render the page."""


def chromium() -> str:
    """The Chromium binary (scripts/bootstrap installs the Debian package)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise ChromiumError("chromium not found: run scripts/bootstrap "
                            "(Debian package chromium)")
    return path


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        done = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               *args], capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise ChromiumError(f"chromium exited {done.returncode}: "
                            f"{done.stderr.decode(errors='replace')[-2000:]}")
    return done


def screenshot(page: Path, out: Path, width: int, height: int, timeout: float = 60) -> Path:
    """Render ``page`` in a ``width`` x ``height`` window to the PNG ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    _run([f"--window-size={width},{height}", f"--screenshot={out}",
          page.resolve().as_uri()], timeout)
    if not out.is_file():
        raise ChromiumError(f"chromium wrote no screenshot to {out}")
    return out


def dump_dom(page: Path, timeout: float = 60) -> str:
    """The page's DOM after Chromium loaded and rendered it."""
    return _run(["--dump-dom", page.resolve().as_uri()], timeout).stdout.decode()


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.attrs[a["id"]] = a


def element_attrs(dom: str) -> dict[str, dict[str, str]]:
    """Attributes of every element with an id, by id."""
    parser = _Ids()
    parser.feed(dom)
    return parser.attrs


def page_figures(dom: str) -> dict[str, int]:
    """The headline figures (ids with ``data-value``)."""
    return {k: int(a["data-value"]) for k, a in element_attrs(dom).items()
            if "data-value" in a}


@dataclass(frozen=True, slots=True)
class PngStats:
    """Size and content of a screenshot."""

    width: int
    height: int
    ink: float  # fraction of pixels that are not (near) white
    colours: int  # distinct colours (quantised)


def png_stats(data: bytes) -> PngStats:
    """Measure a PNG: size, how much is drawn and how many colours."""
    pixels = np.asarray(mpimg.imread(io.BytesIO(data), format="png"))[..., :3]
    height, width = pixels.shape[:2]
    ink = float(np.mean(pixels.min(axis=2) < 0.9))
    quantised = (pixels * 15).round().astype(np.int32).reshape(-1, 3)
    colours = len(np.unique(quantised[:, 0] * 256 + quantised[:, 1] * 16 + quantised[:, 2]))
    return PngStats(width, height, ink, colours)
