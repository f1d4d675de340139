"""The web page in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium): upload an image, the boxes appear on the canvas and the detections in the table.

`.ci/run` installs chromium and chromium-driver; where they cannot be installed the test is
skipped and says so.
"""

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sightkit.serve.app import create_app
from sightkit.serve.config import ServeConfig

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # the page's first colours, one per class


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server_url(detector_weights: Path) -> Iterator[str]:
    """The app under uvicorn in a thread on a loopback port: one detection per image."""
    import uvicorn

    port = free_port()
    app = create_app(ServeConfig(weights=str(detector_weights), conf=0.0, top_k=1))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"Chromium or chromedriver is not installed ({CHROMIUM}, {CHROMEDRIVER}); .ci/run installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_window_size(1000, 1200)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_upload_draws_the_boxes_and_fills_the_table(
    server_url: str, browser: object, png: Callable[[int, int, int], bytes], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "shapes.png"
    image.write_bytes(png(120, 160, 7))
    answer = httpx.post(f"{server_url}/v1/predict", files={"images": ("shapes.png", image.read_bytes())}).json()
    (result,) = answer["results"]
    (box,), (score,), (label,) = result["boxes"], result["scores"], result["names"]
    expected = {"box": box, "score": score, "label": label}

    browser.get(server_url)
    WebDriverWait(browser, 30).until(lambda d: "detr_r18_tiny" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detections tbody tr"))

    (row,) = browser.find_elements(By.CSS_SELECTOR, "#detections tbody tr")
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[1] == expected["label"]
    assert float(cells[2]) == pytest.approx(expected["score"], abs=5e-4)
    assert [float(c) for c in cells[3].split(",")] == pytest.approx(expected["box"], abs=0.051)
    assert "1 detection in shapes.png (160 x 120)" in browser.find_element(By.ID, "status").text

    # The picture is drawn as wide as the section (at most 80% of the window's height): a 160 x 120
    # image is enlarged, and the box's left edge is in the class's colour at the scaled position.
    room, window_height, shown_width, shown_height, ratio = browser.execute_script(
        "const box = document.getElementById('canvas').getBoundingClientRect();"
        "return [document.getElementById('detect-section').clientWidth, window.innerHeight,"
        " box.width, box.height, window.devicePixelRatio || 1];"
    )
    scale = min(room / 160, 0.8 * window_height / 120)
    assert scale > 2
    assert shown_width == pytest.approx(160 * scale, abs=1) and shown_height == pytest.approx(120 * scale, abs=1)
    x1, y1, _, y2 = expected["box"]
    # The stroke is 3 CSS pixels wide around the edge: the device pixel left of the edge's is wholly inside it.
    width, height, pixel = browser.execute_script(
        "const c = document.getElementById('canvas');"
        "const p = c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data;"
        "return [c.width, c.height, [p[0], p[1], p[2]]];",
        round(x1 * shown_width / 160 * ratio) - 1,
        round((y1 + y2) / 2 * shown_height / 120 * ratio),
    )
    assert (width, height) == (round(shown_width * ratio), round(shown_height * ratio))
    assert tuple(pixel) == PALETTE[["circle", "square", "triangle"].index(expected["label"])]
    assert browser.find_element(By.ID, "legend").text == f"{expected['label']} × 1"
    browser.save_screenshot(str(tmp_path / "page.png"))


@pytest.mark.slow
def test_a_bad_upload_shows_the_servers_reason(server_url: str, browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not a picture")
    browser.get(server_url)
    WebDriverWait(browser, 30).until(lambda d: "detr_r18_tiny" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(fake))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "status").get_attribute("class") == "error")
    assert "notes.png: the content is not a JPEG, PNG, WebP or BMP image" in browser.find_element(By.ID, "status").text
