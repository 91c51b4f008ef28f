"""Screenshot of `serve`'s try-it page with an answer on it (README's docs/ui.png).

    python scripts/ui_screenshot.py --head heads/NAME --image IMAGE [--out docs/ui.png]

Starts `serve --head HEAD` on a free 127.0.0.1 port, opens / in headless Chromium (Debian's;
`eval "$(bash ../shared/browser/setup.sh)"` sets $CHROMIUM and $CHROMEDRIVER), picks IMAGE in
the file input, waits for the answer and saves the window as a PNG. Needs selenium (dev extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"serve exited with status {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"serve was not ready within {timeout_s:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head", required=True, type=Path, help="head folder to serve")
    p.add_argument("--image", required=True, type=Path, help="image to classify on the page")
    p.add_argument("--out", type=Path, default=Path("docs/ui.png"), help="PNG to write")
    p.add_argument("--size", default="760x640", help="window WIDTHxHEIGHT in CSS pixels")
    args = p.parse_args()

    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "featcache", "serve", "--head",
                               str(args.head), "--port", str(port), "--log-level", "warning"])
    try:
        _wait_ready(url, server, timeout_s=180)
        options = webdriver.ChromeOptions()
        options.binary_location = os.environ.get("CHROMIUM") or shutil.which("chromium") or ""
        width, height = args.size.split("x")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    f"--window-size={width},{height}", "--hide-scrollbars"):
            options.add_argument(arg)
        service = webdriver.ChromeService(os.environ.get("CHROMEDRIVER")
                                          or shutil.which("chromedriver"))
        driver = webdriver.Chrome(options=options, service=service)
        try:
            driver.get(url + "/")
            driver.find_element(By.ID, "files").send_keys(str(args.image.resolve()))
            WebDriverWait(driver, 60).until(ec.visibility_of_element_located(
                (By.CSS_SELECTOR, "#results .timing")))
            # The whole page, answer included: grow the window to the page's height.
            inner = driver.execute_script("return window.innerHeight")
            page = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(int(width), driver.get_window_size()["height"] + page - inner)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
