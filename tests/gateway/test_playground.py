"""The compression playground in a real headless browser (Debian's chromium + chromium-driver, selenium):
it loads, compresses text and chat messages, highlights kept and dropped words, shows the request as
code, and shows a clear message for errors (bad input, a bad option, a missing API key). Skipped
only where chromium is absent and CI is not set (CI installs it: .ci/run). Slow (a browser and
servers: tens of seconds); .ci/run runs them explicitly."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.proxy import RunningProxy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if (CHROMIUM is None or DRIVER is None) and not os.environ.get("CI"):
    pytest.skip("needs Debian's chromium and chromium-driver (apt; .ci/run installs them)", allow_module_level=True)

pytestmark = pytest.mark.slow

KEY = "sk-playground-test"
SHOTS = os.environ.get("PROMPTWIRE_SCREENSHOTS")
"""Set to a directory to save the browser's screenshots there (docs/img/ uses them)."""


def _config(**server: Any) -> dict[str, Any]:
    return {
        "server": {"playground": True, **server},
        "stages": {"compress": {"model": "tiny:llmlingua2"}},
        "default_stages": [{"name": "compress", "enabled": False, "client_options": ["*"]}],
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The stand-in classifier is built once under a test cache (PROMPTWIRE_CACHE_DIR)."""
    import warnings

    from compressors.llmlingua2.export import ensure_exported

    old = os.environ.get("PROMPTWIRE_CACHE_DIR")
    os.environ["PROMPTWIRE_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "pw-cache")
    with warnings.catch_warnings():  # torch's ONNX exporter warns about its own deprecations
        warnings.simplefilter("ignore")
        ensure_exported("tiny:llmlingua2")  # before the servers start (it takes seconds)
    yield
    if old is None:
        os.environ.pop("PROMPTWIRE_CACHE_DIR", None)
    else:
        os.environ["PROMPTWIRE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        pytest.fail("CI must have chromium and chromium-driver installed (see .ci/run)")
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(cache: None) -> Iterator[RunningProxy]:
    with RunningProxy(_config()) as p:
        yield p


def _wait(driver: Any, cond: Any, timeout: float = 120) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(cond)


def _el(driver: Any, id_: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, id_)


def _compress(driver: Any) -> None:
    """Click Compress and wait for a result or an error."""
    driver.execute_script("document.getElementById('tokens-after').textContent = '';")
    _el(driver, "run").click()
    _wait(driver, lambda d: _el(d, "tokens-after").text or _el(d, "error").is_displayed())


def _shot(driver: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))


def test_playground_loads_compresses_and_highlights(browser: Any, server: RunningProxy) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.base + "/playground")
    assert "promptwire playground" in browser.title
    assert _el(browser, "input").get_attribute("value").startswith("Good evening")
    _compress(browser)
    assert not _el(browser, "error").is_displayed(), _el(browser, "error").text
    before, after = int(_el(browser, "tokens-before").text), int(_el(browser, "tokens-after").text)
    assert 0 < after < before
    kept = browser.find_elements(By.CSS_SELECTOR, "#highlight .kept")
    dropped = browser.find_elements(By.CSS_SELECTOR, "#highlight .dropped")
    assert kept and dropped
    assert all(k.text in _el(browser, "compressed").text for k in kept)
    assert _el(browser, "latency").text.endswith("ms)")
    assert "/v1/compress" in _el(browser, "code").text and "curl" in _el(browser, "code").text
    _shot(browser, "playground-text")
    browser.find_element(By.CSS_SELECTOR, 'input[name="code"][value="openai"]').click()
    code = _el(browser, "code").text
    assert "extra_body" in code and '"compress"' in code and "chat.completions.create" in code

    browser.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="messages"]').click()
    assert _el(browser, "input").get_attribute("value").lstrip().startswith("[")
    _compress(browser)
    assert not _el(browser, "error").is_displayed(), _el(browser, "error").text
    roles = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#highlight .msg-role")]
    assert roles == ["system", "user", "assistant", "user"]
    assert browser.find_elements(By.CSS_SELECTOR, "#highlight .dropped")
    _shot(browser, "playground-messages")


def test_playground_shows_errors_clearly(browser: Any, server: RunningProxy) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.base + "/playground")
    browser.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="messages"]').click()
    box = _el(browser, "input")
    box.clear()
    box.send_keys('[{"role": "user", "content": ')  # not JSON
    _el(browser, "run").click()
    _wait(browser, lambda d: _el(d, "error").is_displayed())
    assert "messages: not valid JSON" in _el(browser, "error").text

    browser.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="text"]').click()
    box.clear()
    box.send_keys("The council will now vote on the water budget.")
    browser.find_element(By.CSS_SELECTOR, 'input[name="budget"][value="target"]').click()
    target = _el(browser, "target")
    target.clear()
    target.send_keys("-5")
    _compress(browser)
    err = _el(browser, "error").text
    assert "Error 400" in err and "target_token" in err
    _shot(browser, "playground-error")


def test_playground_calls_need_the_servers_key(browser: Any, cache: None) -> None:
    keys = [{"id": "k1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]
    with RunningProxy({**_config(), "auth": {"keys": keys}}) as p:
        browser.get(p.base + "/playground")  # the page itself holds nothing
        _compress(browser)
        assert "Error 401" in _el(browser, "error").text
        _el(browser, "key").send_keys(KEY)
        _compress(browser)
        assert not _el(browser, "error").is_displayed(), _el(browser, "error").text
        assert int(_el(browser, "tokens-after").text) > 0


def test_playground_is_off_unless_configured(cache: None) -> None:
    cfg = _config()
    cfg["server"] = {}
    with RunningProxy(cfg) as p, p.http() as http:
        assert http.get("/playground").status_code == 404
    with RunningProxy(_config()) as p, p.http() as http:
        page = http.get("/playground")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]  # nothing from elsewhere
        assert http.get("/playground/playground.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/playground/nothing.txt").status_code == 404
