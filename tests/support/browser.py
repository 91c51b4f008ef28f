"""Headless Chromium driven by Selenium, for tests of the pages people look at.

Chromium and chromedriver come from Debian's packages (../shared/browser/setup.sh, run by
scripts/test), found through $CHROMIUM and $CHROMEDRIVER or on PATH. A missing browser fails
the test with the command that installs it: these tests are never skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

SETUP = 'eval "$(bash ../shared/browser/setup.sh)"'


def _find(env: str, name: str) -> str:
    found = os.environ.get(env) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found (${env} unset, not on PATH): run {SETUP}")
    return found


@contextlib.contextmanager
def chromium(width: int = 1000, height: int = 900) -> Iterator[Any]:
    """A headless Chromium WebDriver, quit when the block ends."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = _find("CHROMIUM", "chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    service = webdriver.ChromeService(_find("CHROMEDRIVER", "chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


#: Inputs without a label and images without alt text, as "tag#id" strings.
_ACCESSIBILITY_PROBLEMS = """
const problems = [];
for (const el of document.querySelectorAll("input, select, textarea")) {
  if (el.type === "hidden") continue;
  const labelled = (el.id && document.querySelector(`label[for="${el.id}"]`))
    || el.closest("label") || el.getAttribute("aria-label");
  if (!labelled) problems.push(`${el.tagName.toLowerCase()}#${el.id} has no label`);
}
for (const img of document.querySelectorAll("img")) {
  if (!(img.getAttribute("alt") || "").trim()) {
    problems.push(`img ${img.src.slice(0, 60)} has no alt`);
  }
}
return problems;
"""


def accessibility_problems(driver: Any) -> list[str]:
    problems: list[str] = driver.execute_script(_ACCESSIBILITY_PROBLEMS)
    return problems


def broken_images(driver: Any) -> list[str]:
    """Images that did not load (naturalWidth 0 once complete), by the start of their src."""
    broken: list[str] = driver.execute_script(
        "return Array.from(document.images)"
        ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80));")
    return broken
