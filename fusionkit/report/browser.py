"""The report in a real browser: headless Chromium from the system's packages (Debian's
``chromium`` and ``chromium-driver``, driven through selenium with the driver's path given, so
that selenium never looks for or downloads a browser of its own).

:func:`inspect` opens a ``report.html`` at a laptop's width and says what a reader sees (its
sections, the images that did not load, whether the page is wider than the window);
:func:`screenshot` saves its first screen. :func:`find` says where the browser is, or None.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: where Debian's packages put the browser and its driver (``apt-get install chromium chromium-driver``)
CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = ("chromedriver",)
#: the window the report is checked at (a laptop screen)
WIDTH, HEIGHT = 1280, 800
#: the screenshot ``fusionkit run`` saves next to the report
SCREENSHOT = "report_first_screen.png"


@dataclass(frozen=True)
class Browser:
    chromium: str
    chromedriver: str


def find() -> Browser | None:
    """The system's Chromium and its driver (``$FUSIONKIT_CHROMIUM`` / ``$FUSIONKIT_CHROMEDRIVER``
    or on ``PATH``), or None when either is missing or selenium is not installed."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    chromium = os.environ.get("FUSIONKIT_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM)), None)
    driver = os.environ.get("FUSIONKIT_CHROMEDRIVER") or next(filter(None, map(shutil.which, CHROMEDRIVER)), None)
    if not chromium or not driver or not all(os.access(p, os.X_OK) for p in (chromium, driver)):
        return None
    return Browser(chromium, driver)


MISSING = (
    "no headless browser: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
)


@contextlib.contextmanager
def open_page(report: str | os.PathLike, browser: Browser | None = None) -> Iterator[object]:
    """A headless Chromium window of :data:`WIDTH` x :data:`HEIGHT` CSS pixels showing ``report``
    (a selenium WebDriver), closed on exit. Raises RuntimeError (:data:`MISSING`) without a browser."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = browser or find()
    if browser is None:
        raise RuntimeError(MISSING)
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser.chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={WIDTH},{HEIGHT}",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=browser.chromedriver), options=opts)
    try:
        driver.execute_cdp_cmd(  # the viewport itself (not the window around it) at WIDTH x HEIGHT
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.get(Path(report).resolve().as_uri())
        yield driver
    finally:
        driver.quit()


_INSPECT = """
const imgs = Array.from(document.images);
return {
  sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
  titles: Array.from(document.querySelectorAll('section[id] > h2')).map(h => h.textContent),
  images: imgs.length,
  broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40)),
  inner_width: window.innerWidth,
  scroll_width: document.documentElement.scrollWidth,
  wide: document.documentElement.scrollWidth <= window.innerWidth ? [] : Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right >
        window.innerWidth + 1 && getComputedStyle(e).position !== 'fixed').slice(0, 5).map(e => e.tagName +
        (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className : '')),
};
"""


def inspect(
    report: str | os.PathLike, browser: Browser | None = None, screenshot: str | os.PathLike | None = None
) -> dict:
    """What a reader sees of ``report`` at :data:`WIDTH` px: ``sections`` (the ids of its
    ``<section>``), ``titles``, ``images`` (how many), ``broken`` (images that did not load),
    ``inner_width`` / ``scroll_width`` (wider than the window: horizontal overflow) and ``wide``
    (the first elements reaching past the window's right edge); with ``screenshot``, the first
    screen is saved there too (one browser for both)."""
    with open_page(report, browser) as driver:
        seen = driver.execute_script(_INSPECT)
        if screenshot is not None:
            _save(driver, Path(screenshot), report)
        return seen


def _save(driver, out: Path, report) -> None:
    tmp = out.with_name(f".{out.name}.tmp.png")
    if not driver.save_screenshot(str(tmp)):
        raise RuntimeError(f"{report}: the browser saved no screenshot")
    tmp.replace(out)


def screenshot(report: str | os.PathLike, out: str | os.PathLike, browser: Browser | None = None) -> Path:
    """Save the first screen (:data:`WIDTH` x :data:`HEIGHT`) of ``report`` as a PNG at ``out``."""
    out = Path(out)
    with open_page(report, browser) as driver:
        _save(driver, out, report)
    return out
