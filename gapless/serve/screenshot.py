"""Drive the served page in headless Chromium: type German, translate, read the English back,
and optionally save a screenshot (the README's picture, the browser test).

    python -m gapless.serve.screenshot http://127.0.0.1:8080 docs/serve_page.png \\
        [--text "Ein Hund läuft."] [--beam 5] [--n-best 3]

Needs selenium and Chromium with its driver (Debian: ``apt-get install chromium
chromium-driver``; other paths via GAPLESS_CHROMIUM / GAPLESS_CHROMEDRIVER).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

EXAMPLE = ("Ein Mann fährt mit dem Fahrrad durch die Stadt.\n"
           "Zwei Hunde spielen im Schnee.")


def browser_paths() -> tuple[str, str]:
    """(Chromium binary, chromedriver) from the environment or Debian's locations."""
    return (os.environ.get("GAPLESS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium",
            os.environ.get("GAPLESS_CHROMEDRIVER") or shutil.which("chromedriver")
            or "/usr/bin/chromedriver")


def missing() -> str | None:
    """Why the page cannot be driven here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path in browser_paths():
        if not Path(path).is_file():
            return f"{path} not found (apt-get install chromium chromium-driver)"
    return None


def chromium(width: int = 1100, height: int = 820):
    """A headless Chromium WebDriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--window-size={width},{height}", "--lang=en-US"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def _set(field, value) -> None:
    from selenium.webdriver.common.keys import Keys

    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value))


def read_page(driver) -> dict:
    """The translations shown (best text, its score, alternatives), the status line and the
    model line."""
    from selenium.webdriver.common.by import By

    items = driver.find_elements(By.CSS_SELECTOR, "#output > li")
    return {
        "translations": [{
            "text": li.find_element(By.CSS_SELECTOR, ".best").text,
            "score": li.find_element(By.CSS_SELECTOR, ".score").text,
            "alternatives": [a.text for a in li.find_elements(By.CSS_SELECTOR, ".alt")],
        } for li in items],
        "status": driver.find_element(By.ID, "status").text,
        "model": driver.find_element(By.ID, "model").text,
        "error": driver.find_element(By.ID, "error").text,
    }


def focus_order(driver, steps: int = 4) -> list[str]:
    """The ids that Tab visits from the page's first focused control."""
    from selenium.webdriver.common.keys import Keys

    order = [driver.switch_to.active_element.get_attribute("id")]
    for _ in range(steps - 1):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        order.append(driver.switch_to.active_element.get_attribute("id"))
    return order


def open_page(driver, url: str, timeout: float = 60.0) -> None:
    """Load the page and wait until it shows the model."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-model"))


def translate(driver, text: str, beam: int | None = None, n_best: int | None = None,
              timeout: float = 60.0) -> dict:
    """On an open page: set beam / n-best, type ``text`` (lines: sentences), press Ctrl+Enter
    and wait for the answer; what the page shows (``read_page``) and the focused control."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    if beam is not None:
        _set(driver.find_element(By.ID, "beam"), beam)
    if n_best is not None:
        _set(driver.find_element(By.ID, "nbest"), n_best)
    source = driver.find_element(By.ID, "source")
    source.click()
    _set(source, text)
    source.send_keys(Keys.CONTROL, Keys.ENTER)
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, "output").get_attribute("data-state") == "done"
        or d.find_element(By.ID, "error").text)
    shown = read_page(driver)
    shown["focused"] = driver.switch_to.active_element.get_attribute("id")
    return shown


def save_page(driver, out: str | Path) -> None:
    """A PNG of the whole page (the window grown to the page's height first)."""
    page, inner = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.innerHeight]")
    outer = driver.get_window_size()
    driver.set_window_size(outer["width"], max(400, outer["height"] - inner + page + 16))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))


def screenshot(url: str, out: str | Path, text: str = EXAMPLE, beam: int | None = None,
               n_best: int | None = None) -> dict:
    """Open ``url`` in headless Chromium, translate ``text`` and save the page as ``out``."""
    driver = chromium()
    try:
        open_page(driver, url)
        shown = translate(driver, text, beam, n_best)
        save_page(driver, out)
        return shown
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="the served page, e.g. http://127.0.0.1:8080")
    p.add_argument("out", help="the screenshot (PNG)")
    p.add_argument("--text", default=EXAMPLE, help="German text; a newline separates sentences")
    p.add_argument("--beam", type=int)
    p.add_argument("--n-best", type=int)
    args = p.parse_args(argv)
    why = missing()
    if why:
        raise SystemExit(f"screenshot: {why}")
    shown = screenshot(args.url, args.out, args.text.replace("\\n", "\n"), args.beam,
                       args.n_best)
    print(json.dumps(shown, ensure_ascii=False, indent=1))
    return 0 if shown["translations"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
