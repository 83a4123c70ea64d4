"""The page at / in a real headless browser (Debian's chromium + chromedriver, driven by Selenium): the
server has an API key, the page opens without it and asks for it; then pick a seed, move the interpolation
slider, upload an image; screenshot; check that images came back."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import headless_chromium, needs_browser, serving

pytestmark = needs_browser


API_KEY = "page-test-key"


@pytest.fixture
def server(tmp_path):
    import torch
    from dcgan.archs.dcgan import Encoder, Generator, init_weights
    from dcgan.model import save

    torch.manual_seed(0)
    save(Generator(32, 3, 16, 8).apply(init_weights), tmp_path / "g.pt")
    save(Encoder(32, 3, 16, 8).apply(init_weights), tmp_path / "e.pt")
    with serving(tmp_path / "g.pt", tmp_path / "e.pt", "--invert-steps", "5",
                 env={**os.environ, "DCGAN_API_KEY": API_KEY}, tries=300) as (url, _):
        yield url


def test_page_in_a_headless_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium(tmp_path / "profile", "1100,1200")
    try:
        wait = WebDriverWait(driver, 30)
        loaded = "const i = document.getElementById(arguments[0]); return i.complete && i.naturalWidth > 0;"
        driver.get(server + "/")                      # opens without the key, and asks for it
        wait.until(lambda d: d.find_element(By.ID, "auth").is_displayed())
        assert "API key" in driver.find_element(By.ID, "error").text
        driver.find_element(By.ID, "key").send_keys(API_KEY)
        driver.find_element(By.ID, "key-ok").click()
        wait.until(lambda d: d.execute_script(loaded, "seed-img") and d.execute_script(loaded, "lerp-img"))
        first = driver.find_element(By.ID, "seed-img").get_attribute("src")
        seed = driver.find_element(By.ID, "seed")      # type a seed, press show: a new image arrives
        seed.clear()
        seed.send_keys("7")
        driver.find_element(By.ID, "show").click()
        wait.until(lambda d: d.find_element(By.ID, "seed-img").get_attribute("src") != first
                   and d.execute_script(loaded, "seed-img"))
        lerp = driver.find_element(By.ID, "lerp-img").get_attribute("src")
        slider = driver.find_element(By.ID, "t")      # drag the slider with the keyboard: a new in-between image
        slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        wait.until(lambda d: d.find_element(By.ID, "lerp-img").get_attribute("src") != lerp
                   and d.execute_script(loaded, "lerp-img"))
        photo = tmp_path / "photo.png"                # an image in: its reconstruction and embedding out
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
        driver.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda d: d.execute_script(loaded, "recon-img"))
        assert driver.find_element(By.ID, "embedding").text.count(",") == 15   # 16 numbers
        assert float(driver.find_element(By.ID, "mse").text) >= 0
        assert driver.find_element(By.ID, "error").text == ""
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("DCGAN_PAGE_SCREENSHOT"):   # where a person wants to look at it
            shutil.copy(shot, os.environ["DCGAN_PAGE_SCREENSHOT"])
    finally:
        driver.quit()
    img = np.array(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 500 and img.shape[1] > 500
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50    # pictures on it, not a blank page
