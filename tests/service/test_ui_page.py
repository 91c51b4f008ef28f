"""Issue 22, item 1: the try-it page at / of `serve`, in a real browser against real servers.

Headless Chromium (tests/support/browser.py) against `serve`'s app on a live socket with the
real VGG16 weights and real heads; the error cases (413, 503) on a fake conv base. Screenshots
go to each test's tmp_path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import accessibility_problems, broken_images, chromium
from fastapi import FastAPI
from headfolders import install
from liveserver import live_server_thread

from service.api.routes import ui
from service.app import create_app
from service.cli import build_parser
from service.config import Settings

UI_FILES = Path(__file__).resolve().parents[2] / "service" / "ui"


def _settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


# ---- the page as files and routes (no browser) ------------------------------------------------

def test_page_and_assets_are_open_without_the_key_and_the_api_is_not(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app(api_key="s3cret") as client:
        page = client.get("/")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")
        assert client.get("/heads").status_code == 401
        assert client.post("/predict", files={"file": ("a.png", b"x")}).status_code == 401
        assert client.get("/ui/other.js").status_code == 401  # only the page's own files


def test_the_page_needs_nothing_from_elsewhere() -> None:
    """No CDN, no external font or script: the page works offline."""
    for name in ("index.html", "app.js", "style.css"):
        text = (UI_FILES / name).read_text()
        assert "://" not in text, name
        assert "@import" not in text and "fetch(\"/" not in text, name


def test_the_page_is_package_data() -> None:
    """`pip install .` (and so the Docker images) carries every file of the page."""
    import fnmatch
    import tomllib

    patterns = tomllib.loads((UI_FILES.parents[1] / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["service"]
    files = sorted(p.name for p in UI_FILES.iterdir())
    assert files == ["app.js", "index.html", "style.css"]
    assert all(any(fnmatch.fnmatch(f"ui/{f}", pat) for pat in patterns) for f in files)
    assert {name for name, _ in ui.ASSETS.values()} == set(files)


def test_ui_false_turns_the_page_off(fake_app, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    with fake_app(ui=False) as client:
        assert client.get("/").status_code == 404
        assert client.get("/ui/app.js").status_code == 404
        assert client.get("/health").status_code == 200
    monkeypatch.setenv("FEATCACHE_UI", "false")
    assert _settings().ui is False
    assert build_parser().parse_args(["--head", "h", "--no-ui"]).ui is False
    assert build_parser().parse_args(["--head", "h"]).ui is None  # unset: the setting decides


# ---- in a browser ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    with chromium() as d:
        yield d


def _open(driver: Any, url: str) -> None:
    driver.get(url + "/")
    driver.execute_script("sessionStorage.clear();")
    driver.get(url + "/")


def _wait(driver: Any, css: str, timeout_s: float = 60) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _upload(driver: Any, path: Path) -> Any:
    """Pick `path` in the file input; the newest result card once it has its answer."""
    from selenium.webdriver.common.by import By

    before = len(driver.find_elements(By.CSS_SELECTOR, "#results > li"))
    driver.find_element(By.ID, "files").send_keys(str(path))
    _wait_for(lambda: len(driver.find_elements(
        By.CSS_SELECTOR, "#results > li:not([aria-busy])")) > before)
    return driver.find_elements(By.CSS_SELECTOR, "#results > li")[0]


def _bars(card: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {row.find_element(By.CLASS_NAME, "bar-name").text:
            row.find_element(By.CLASS_NAME, "bar-value").text
            for row in card.find_elements(By.CLASS_NAME, "bar-row")}


def _heads_dir(tmp_path_factory: pytest.TempPathFactory, head_dir: Path,
               second_head_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("served")
    install(head_dir, root / "elpv-logreg" / "1")
    install(second_head_dir, root / "elpv-svm" / "1")
    install(second_head_dir, root / "elpv-svm" / "2")
    return root


@pytest.mark.slow
def test_pick_an_image_see_label_bars_errors_and_switch_heads(
    driver: Any, conv_base: Any, weights_path: Path, head_dir: Path, second_head_dir: Path,
    elpv_images: list[Path], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Two heads in a --heads-dir on the real conv base: upload, read the answer, upload a
    text file and see its error, switch heads and get the other head's answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root = _heads_dir(tmp_path_factory, head_dir, second_head_dir)
    app = create_app(_settings(heads=[], heads_dir=root, heads_poll_s=0,
                               weights=str(weights_path)),
                     backbone_factory=lambda *_: conv_base)
    image = elpv_images[0]
    with live_server_thread(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            expected = {name: client.post(f"/predict?head={name}",
                                          files={"file": (image.name, image.read_bytes())}
                                          ).json()
                        for name in ("elpv-logreg", "elpv-svm")}
        _open(driver, url)
        _wait_for(lambda: len(Select(driver.find_element(By.ID, "head")).options) == 2)
        picker = Select(driver.find_element(By.ID, "head"))
        assert [o.get_attribute("value") for o in picker.options] == ["elpv-logreg", "elpv-svm"]
        assert "v2" in picker.options[1].text  # the version served
        assert "available" in driver.find_element(By.ID, "head-versions").get_attribute(
            "textContent")

        picker.select_by_value("elpv-logreg")
        card = _upload(driver, image)
        got = expected["elpv-logreg"]
        assert card.find_element(By.CLASS_NAME, "label").text == got["label"]
        assert _bars(card) == {k: f"{100 * p:.1f}%" for k, p in got["probabilities"].items()}
        widths = [float(f.get_attribute("style").split("width:")[1].split("%")[0])
                  for f in card.find_elements(By.CLASS_NAME, "bar-fill")]
        assert sum(widths) == pytest.approx(100, abs=0.01) and max(widths) > 0
        assert "ms" in card.find_element(By.CLASS_NAME, "timing").text
        # The page asks for explain=true: the real heatmap lies over the image, and loads.
        overlay = card.find_element(By.CSS_SELECTOR, "img.overlay")
        assert overlay.get_attribute("alt").startswith("Heatmap")
        assert driver.execute_script("return arguments[0].naturalWidth", overlay) > 0
        assert accessibility_problems(driver) == []
        assert broken_images(driver) == []
        driver.save_screenshot(str(tmp_path / "prediction.png"))

        text = tmp_path / "notes.txt"
        text.write_text("not an image\n")
        card = _upload(driver, text)
        error = card.find_element(By.CSS_SELECTOR, ".error[role=alert]")
        assert error.is_displayed() and "HTTP 422" in error.text and "invalid_image" in error.text
        driver.save_screenshot(str(tmp_path / "error.png"))

        Select(driver.find_element(By.ID, "head")).select_by_value("elpv-svm")
        card = _upload(driver, image)
        got = expected["elpv-svm"]
        assert got["version"] == "2"
        assert "head elpv-svm v2" in card.find_element(By.CLASS_NAME, "timing").text
        assert card.find_element(By.CLASS_NAME, "label").text == got["label"]
        assert _bars(card) == {k: f"{100 * p:.1f}%" for k, p in got["probabilities"].items()}
        driver.save_screenshot(str(tmp_path / "second-head.png"))
    assert all((tmp_path / n).stat().st_size > 0
               for n in ("prediction.png", "error.png", "second-head.png"))


@pytest.mark.slow
def test_with_an_api_key_the_page_asks_for_it_once(
    driver: Any, conv_base: Any, weights_path: Path, head_dir: Path, elpv_images: list[Path],
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    app = create_app(_settings(heads=[head_dir], api_key="s3cret", weights=str(weights_path)),
                     backbone_factory=lambda *_: conv_base)
    with live_server_thread(app) as url:
        _open(driver, url)
        field = _wait(driver, "#api-key")
        assert driver.find_element(By.CSS_SELECTOR, "label[for=api-key]").is_displayed()
        assert accessibility_problems(driver) == []
        driver.save_screenshot(str(tmp_path / "asks-for-key.png"))
        field.send_keys("wrong")
        driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
        _wait_for(lambda: "refused" in driver.find_element(By.ID, "key-why").text)
        assert driver.find_element(By.ID, "key-form").is_displayed()

        driver.find_element(By.ID, "api-key").send_keys("s3cret")
        driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
        _wait_for(lambda: not driver.find_element(By.ID, "key-form").is_displayed())
        card = _upload(driver, elpv_images[0])
        assert card.find_element(By.CLASS_NAME, "label").text in {"defective", "functional"}
        # Kept in this tab's session storage: never a cookie, never the URL.
        assert driver.execute_script(
            "return sessionStorage.getItem('featcache-api-key')") == "s3cret"
        assert driver.get_cookies() == []
        assert "s3cret" not in driver.current_url
        driver.refresh()  # asked once: the tab remembers it
        _wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#head option")) == 1)
        assert not driver.find_element(By.ID, "key-form").is_displayed()


@pytest.mark.slow
def test_too_large_and_busy_are_shown_with_retry_after(
    driver: Any, head_dir: Path, weights_path: Path, make_fake: Any, elpv_images: list[Path],
    tmp_path: Path,
) -> None:
    import threading

    from selenium.webdriver.common.by import By

    fake = make_fake()
    app = create_app(_settings(heads=[head_dir], max_upload_bytes=1000, warmup=False,
                               weights=str(weights_path)),
                     backbone_factory=lambda *_: fake)
    with live_server_thread(app) as url:
        _open(driver, url)
        _wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#head option")) == 1)
        card = _upload(driver, elpv_images[0])  # ~100 KB, over the 1000-byte limit
        error = card.find_element(By.CSS_SELECTOR, ".error[role=alert]").text
        assert error.startswith("HTTP 413") and "Too large" in error

    release = threading.Event()

    def slow_factory(*_: Any) -> Any:
        release.wait(60)
        return fake

    app = create_app(_settings(heads=[head_dir], warmup=False, weights=str(weights_path)),
                     backbone_factory=slow_factory)
    with live_server_thread(app, ready_path="/health") as url:
        try:
            _open(driver, url)
            _wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#head option")) == 1)
            card = _upload(driver, elpv_images[0])
            error = card.find_element(By.CSS_SELECTOR, ".error[role=alert]").text
            assert error.startswith("HTTP 503 not_ready") and "retry after" in error, error
            driver.save_screenshot(str(tmp_path / "busy.png"))
        finally:
            release.set()  # the server stops only once its model has loaded


# Fields other features add to /predict; the page shows them when present.
_PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJ"
            "RU5ErkJggg==")


def _stub_app(answer: dict[str, Any], seen: list[str]) -> FastAPI:
    """The page's routes in front of a stand-in API that answers `answer` to every upload."""
    app = FastAPI()
    app.include_router(ui.router)

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/heads")
    def heads() -> dict[str, Any]:
        return {"default": "h", "unserved": [], "heads": [{
            "name": "h", "default": True, "version": None, "versions": [],
            "classes": ["defective", "functional"], "spec": {}, "metrics": None}]}

    @app.post("/predict")
    def predict(explain: str = "") -> dict[str, Any]:
        seen.append(explain)
        return answer

    return app


@pytest.mark.slow
def test_heatmap_out_of_distribution_and_abstention_are_shown_when_present(
    driver: Any, elpv_images: list[Path], tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    base = {"probabilities": {"defective": 0.55, "functional": 0.45}, "head": "h",
            "version": None, "cached": False, "views": 1, "timings_ms": {"total": 12.0}}
    seen: list[str] = []
    explained = {**base, "label": "defective", "ood_score": 7.5, "in_distribution": False,
                 "explanation": {"grid": [[0.0, 1.0], [1.0, 0.0]], "overlay_png": _PNG_1PX}}
    with live_server_thread(_stub_app(explained, seen)) as url:
        _open(driver, url)
        card = _upload(driver, elpv_images[0])
        overlay = card.find_element(By.CSS_SELECTOR, "img.overlay")
        assert overlay.get_attribute("alt").startswith("Heatmap")
        assert broken_images(driver) == []
        warning = card.find_element(By.CLASS_NAME, "warning").text
        assert "out-of-distribution score 7.500" in warning
        driver.save_screenshot(str(tmp_path / "explained.png"))
    assert seen == ["true"]  # the page asks for the heatmap

    abstained = {**base, "label": None, "abstained": True, "in_distribution": True}
    with live_server_thread(_stub_app(abstained, seen)) as url:
        _open(driver, url)
        card = _upload(driver, elpv_images[0])
        assert card.find_element(By.CLASS_NAME, "label").text == "Abstained"
        assert not card.find_elements(By.CLASS_NAME, "warning")
        assert len(_bars(card)) == 2

        # The keyboard reaches the head picker and the file input, in that order.
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        driver.execute_script("document.activeElement.blur()")
        reached = []
        for _ in range(3):
            ActionChains(driver).send_keys(Keys.TAB).perform()
            reached.append(driver.execute_script("return document.activeElement.id"))
        assert reached[:2] == ["head", "files"], reached

        # A phone's width: one column, nothing to scroll sideways.
        driver.set_window_size(390, 844)
        try:
            assert driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth")
            driver.save_screenshot(str(tmp_path / "phone.png"))
        finally:
            driver.set_window_size(1000, 900)
