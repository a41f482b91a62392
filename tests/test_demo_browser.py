"""The demo in a real browser: Debian's chromium + chromium-driver, headless, driven by selenium.

Uploads an image, waits for the streamed summary, asks a follow-up, and saves a screenshot as
`demo.png` in the test's tmp dir.  Skipped, with the reason, when the browser is not installed
(`bash scripts/install_browser.sh` installs it with apt-get).  Other binaries:
XRAYGPT_CHROMIUM=/path/to/chromium XRAYGPT_CHROMEDRIVER=/path/to/chromedriver.
"""

import os
import time
from pathlib import Path

import pytest

from test_demo import running_demo

CHROMIUM = os.environ.get("XRAYGPT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("XRAYGPT_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1100")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    webdriver = pytest.importorskip("selenium.webdriver")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        reason = (f"browser test skipped: {', '.join(missing)} not found; run `bash scripts/install_browser.sh` "
                  "(apt-get install chromium chromium-driver) or set XRAYGPT_CHROMIUM / XRAYGPT_CHROMEDRIVER")
        print(reason)
        pytest.skip(reason)
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


def _bot_texts(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, "#chat [data-testid='bot']")]


def _wait_for_answers(driver, count: int, timeout: float = 60) -> list[str]:
    """Bot messages once there are `count` non-empty ones and their text stopped changing."""
    deadline, last, stable_since = time.time() + timeout, None, time.time()
    while time.time() < deadline:
        texts = _bot_texts(driver)
        if texts != last:
            last, stable_since = texts, time.time()
        elif len(texts) >= count and all(texts) and time.time() - stable_since > 1.0:
            return texts
        time.sleep(0.2)
    raise AssertionError(f"expected {count} answers, the chat shows {last}")


def test_upload_summary_and_follow_up_in_chromium(browser, tiny_model_factory, tiny_assets, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    image = sorted((tiny_assets["val"] / "image").iterdir())[0]
    with running_demo(tiny_model_factory(seed=0).eval(), max_new_tokens=16, examples=()) as url:
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        disclaimer = wait.until(ec.visibility_of_element_located((By.ID, "disclaimer")))
        assert "not a diagnosis" in disclaimer.text
        browser.find_element(By.CSS_SELECTOR, "#upload input[type='file']").send_keys(str(image))
        summary = _wait_for_answers(browser, 1)
        assert summary[0] and not summary[0].startswith("⚠️")
        question = browser.find_element(By.CSS_SELECTOR, "#question textarea")
        question.send_keys("is there any effusion?", Keys.ENTER)
        answers = _wait_for_answers(browser, 2)
        assert answers[0] == summary[0] and answers[1]
        user = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#chat [data-testid='user']")]
        assert user[-1].strip() == "is there any effusion?"
        shot = tmp_path / "demo.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
