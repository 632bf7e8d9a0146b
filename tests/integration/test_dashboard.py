"""Pictures, leaderboard, /metrics and the dashboard in headless Chromium, on the real stack.

Screenshots are left in tests/artifacts/dashboard/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import requests
import pytest
from PIL import Image

from tests.models import DIGITS_INPUT, circular_invariant_cnn, save_torchscript

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SWEEP = {"dataset_id": "digits", "shifts": {"dx": [-2, 2], "dy": [-2, 2], "step": 1}, "max_samples": 300, "seed": 1}
WINDOW = (1400, 1000)


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


@pytest.fixture(scope="module")
def carol(pg_stack):
    return pg_stack.session("dash-carol")


@pytest.fixture(scope="module")
def evaluations(carol, digits_model_file, tmp_path_factory) -> dict[str, dict]:
    """Two models swept over the same grid, and a sub-pixel sweep of the first."""
    circular_file = save_torchscript(circular_invariant_cnn(), tmp_path_factory.mktemp("dash") / "circular.pt")
    models = {name: carol.upload_model(path, DIGITS_INPUT, name=name)
              for name, path in (("digits-cnn", digits_model_file), ("circular-cnn", circular_file))}
    for model in models.values():
        assert carol.wait_model(model["id"])["status"] == "ready"
    requests = {
        "cnn": {**SWEEP, "model_id": models["digits-cnn"]["id"]},
        "circular": {**SWEEP, "model_id": models["circular-cnn"]["id"]},
        "half": {**SWEEP, "model_id": models["digits-cnn"]["id"],
                 "shifts": {"dx": [-1, 1], "dy": [-1, 1], "step": 0.5}, "padding": "reflect"},
    }
    submitted = {key: carol.post("/v1/evaluations", json=body).json() for key, body in requests.items()}
    done = {key: carol.wait_evaluation(e["id"]) for key, e in submitted.items()}
    assert all(e["status"] == "succeeded" for e in done.values()), done
    return done


def test_heatmap_and_comparison_pictures(carol, evaluations):
    cnn, circular, half = evaluations["cnn"], evaluations["circular"], evaluations["half"]
    accuracy = png(carol.get(f"/v1/evaluations/{cnn['id']}/heatmap.png"))
    both = png(carol.get(f"/v1/evaluations/{cnn['id']}/heatmap.png?metric=both"))
    assert both.shape[0] == accuracy.shape[0] and both.shape[1] > accuracy.shape[1] + 5 * 40  # a second 5-column plot
    assert len(np.unique(accuracy.reshape(-1, 3), axis=0)) > 20  # cells of several colours, text, a bar
    sub_pixel = png(carol.get(f"/v1/evaluations/{half['id']}/heatmap.png?metric=agreement&scale=full"))
    assert sub_pixel.shape[0] > 200
    compare = png(carol.get(f"/v1/evaluations/{cnn['id']}/compare.png?other={circular['id']}"))
    assert compare.shape[1] > both.shape[1] + 5 * 40  # three panels
    running = carol.get("/v1/evaluations/not-an-id/heatmap.png")
    assert running.status_code == 404 and running.headers["Content-Type"] == "application/problem+json"
    bad = carol.get(f"/v1/evaluations/{cnn['id']}/heatmap.png?metric=loss")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "metric"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "heatmap-both.png").write_bytes(carol.get(f"/v1/evaluations/{cnn['id']}/heatmap.png?metric=both").content)
    (ARTIFACTS / "compare.png").write_bytes(carol.get(f"/v1/evaluations/{cnn['id']}/compare.png?other={circular['id']}").content)


def test_dataset_sample_png_is_the_stored_image(carol):
    from tests.models import digits_arrays

    images, _ = digits_arrays()
    picture = png(carol.get("/v1/datasets/digits/samples/7.png?scale=3"))
    assert picture.shape == (24, 24, 3)
    assert np.array_equal(picture[::3, ::3, 0], images[7])
    assert carol.get("/v1/datasets/digits/samples/1797.png").status_code == 404


def test_leaderboard_ranks_within_each_sweep(carol, evaluations):
    body = carol.get("/v1/leaderboard", params={"dataset_id": "digits", "metric": "mean_accuracy"}).json()
    assert body["metric"] == "mean_accuracy" and body["higher_is_better"] is True
    shared = next(s for s in body["sweeps"] if s["sweep"]["shifts"] == SWEEP["shifts"])
    values = {item["model_name"]: item["value"] for item in shared["items"]}
    assert values == {"digits-cnn": evaluations["cnn"]["summary"]["mean_accuracy"],
                      "circular-cnn": evaluations["circular"]["summary"]["mean_accuracy"]}
    assert [item["rank"] for item in shared["items"]] == [1, 2]
    assert shared["items"][0]["value"] >= shared["items"][1]["value"]
    assert len(body["sweeps"]) == 2 and shared["num_shifts"] == 25
    alone = next(s for s in body["sweeps"] if s is not shared)
    assert [i["evaluation_id"] for i in alone["items"]] == [evaluations["half"]["id"]]
    only = carol.get("/v1/leaderboard", params={"dataset_id": "digits", "sweep_key": alone["sweep_key"]}).json()
    assert [s["sweep_key"] for s in only["sweeps"]] == [alone["sweep_key"]]


def test_other_tenants_see_none_of_it(pg_stack, evaluations):
    mallory = pg_stack.session("dash-mallory")
    evaluation_id = evaluations["cnn"]["id"]
    assert mallory.get(f"/v1/evaluations/{evaluation_id}/heatmap.png").status_code == 404
    assert mallory.get(f"/v1/evaluations/{evaluation_id}/compare.png?other={evaluation_id}").status_code == 404
    assert mallory.get("/v1/leaderboard", params={"dataset_id": "digits"}).json()["sweeps"] == []


def test_metrics_are_derived_from_the_database(pg_stack, carol, evaluations):
    import requests

    from tests.stack import METRICS_TOKEN

    response = requests.get(pg_stack.url + "/metrics", timeout=10, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['shiftscore_evaluations{status="succeeded"}'] >= 3
    images = sum(e["progress"]["total"] for e in evaluations.values())
    assert samples["shiftscore_images_evaluated_total"] >= images
    assert samples["shiftscore_sweep_images_per_second"] > 0  # the sweeps above finished minutes ago at most
    assert samples["shiftscore_broker_up"] == 1
    assert samples['shiftscore_queue_depth{queue="shiftscore"}'] >= 0


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver, with a throw-away profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "install Debian's chromium: apt-get install -y --no-install-recommends chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="shiftscore-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--force-device-scale-factor=1", f"--user-data-dir={profile}",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_window_size(*WINDOW)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, timeout: float = 20):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The list page re-renders its rows on every poll: an element may go stale between two looks.
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: condition(d))


def screenshot(driver, name: str) -> np.ndarray:
    """Save a screenshot of the whole page to the artifacts folder and return its pixels."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WINDOW[0], max(WINDOW[1], height + 140))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(*WINDOW)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[1] == WINDOW[0] and pixels.shape[0] >= WINDOW[0] // 2
    assert pixels.std() > 20  # not a blank page
    return pixels


def sign_in(driver, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    driver.execute_script("sessionStorage.clear()")
    driver.get(url)
    assert driver.find_element(By.ID, "login").is_displayed()
    driver.find_element(By.ID, "token-input").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "content").is_displayed())


def test_dashboard_in_chromium(pg_stack, carol, evaluations, browser):
    token = carol.headers["Authorization"].removeprefix("Bearer ")
    _refuses_a_bad_token(browser, pg_stack)
    _lists_every_evaluation_live(browser, pg_stack, carol, evaluations, token)
    _shows_one_evaluation(browser, pg_stack, carol, evaluations)
    _compares_two_models(browser, evaluations)
    _ranks_the_leaderboard(browser, pg_stack, carol)


def _refuses_a_bad_token(driver, pg_stack) -> None:
    from selenium.webdriver.common.by import By

    driver.get(pg_stack.url + "/dashboard/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(pg_stack.url + "/dashboard/")
    driver.find_element(By.ID, "token-input").send_keys("ss_not-a-token")
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "login-error").is_displayed())
    assert "not accepted" in driver.find_element(By.ID, "login-error").text


def _lists_every_evaluation_live(driver, pg_stack, carol, evaluations, token: str) -> None:
    from selenium.webdriver.common.by import By

    # The list: every evaluation, its model's name, and a live row for a sweep submitted now.
    sign_in(driver, pg_stack.url + "/dashboard/", token)
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#evaluations tbody tr")) == 3)
    table = driver.execute_script("return document.getElementById('evaluations').innerText")
    assert "digits-cnn" in table and "circular-cnn" in table and table.count("succeeded") == 3
    big = carol.post("/v1/evaluations", json={**SWEEP, "model_id": evaluations["cnn"]["model_id"],
                                              "max_samples": 400, "shifts": {"dx": [-3, 3], "dy": [-3, 3]}}).json()
    row = f'#evaluations tr[data-id="{big["id"]}"]'
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, row))  # appears without a reload
    finished = carol.wait_evaluation(big["id"], timeout=120)
    assert finished["status"] == "succeeded", finished
    wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == "succeeded", 10)
    assert "succeeded" in driver.execute_script(f"return document.querySelector('{row}').innerText")
    # At 1400 px the list fits its card, even with a long model name from a training run and a big sweep.
    widths = driver.execute_script(f"""
        const row = document.querySelector('{row}');
        row.cells[1].textContent = 'resnet18-imagenet-antialiased-finetune-2026-11-29-run-0042';
        row.cells[2].textContent = 'imagenet-validation-subset-crop-256';
        row.cells[4].querySelector('span').textContent = '1,234,567,890 / 1,234,567,890';
        const card = document.getElementById('evaluations').closest('.card');
        return [card.scrollWidth, card.clientWidth, document.documentElement.scrollWidth, window.innerWidth];""")
    assert widths[0] <= widths[1] and widths[2] <= widths[3], widths
    screenshot(driver, "evaluations")


def _shows_one_evaluation(driver, pg_stack, carol, evaluations) -> None:
    from selenium.webdriver.common.by import By

    # One evaluation: summary, heatmap, per-class table, fragile samples as images.
    cnn = evaluations["cnn"]
    driver.get(f"{pg_stack.url}/dashboard/evaluations/{cnn['id']}")
    loaded = "return [...document.querySelectorAll('#results img:not([hidden])')].every(i => i.complete && i.naturalWidth > 0)"
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#examples figure img[src^='blob:']")
             and d.find_element(By.ID, "heatmap").get_attribute("src").startswith("blob:") and d.execute_script(loaded))
    assert driver.find_element(By.ID, "evaluation-title").text == "digits-cnn v1 on digits"
    summary = driver.find_element(By.ID, "summary").text
    assert f"{cnn['summary']['consistency'] * 100:.1f}%" in summary
    assert f"{cnn['summary']['worst_case_accuracy'] * 100:.1f}%" in summary
    class_rows = driver.find_elements(By.CSS_SELECTOR, "#classes tbody tr")
    classes = carol.get(f"/v1/evaluations/{cnn['id']}/classes").json()["items"]
    assert len(class_rows) == len(classes) == 10
    examples = carol.get(f"/v1/evaluations/{cnn['id']}/examples?limit=12").json()["items"]
    figures = driver.find_elements(By.CSS_SELECTOR, "#examples figure")
    assert [int(f.get_attribute("data-index")) for f in figures] == [x["index"] for x in examples]
    heatmap = driver.find_element(By.ID, "heatmap")
    box = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.x, r.y, r.width, r.height]",
                                heatmap)
    pixels = screenshot(driver, "evaluation")
    expected = png(carol.get(f"/v1/evaluations/{cnn['id']}/heatmap.png?metric=accuracy"))
    x, y, w, h = (round(v) for v in box)
    assert (w, h) == (expected.shape[1], expected.shape[0])  # shown at its own size
    shown = pixels[y:y + h, x:x + w].astype(int)
    assert np.abs(shown - expected).mean() < 2  # the heatmap's own pixels are on the screen


def _compares_two_models(driver, evaluations) -> None:
    # Compare with the other model of the same sweep.
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "compare-with")).select_by_value(evaluations["circular"]["id"])
    wait_for(driver, lambda d: d.execute_script(
        "const i = document.getElementById('comparison'); return !i.hidden && i.complete && i.naturalWidth > 0"))
    screenshot(driver, "evaluation-compare")


def _ranks_the_leaderboard(driver, pg_stack, carol) -> None:
    from selenium.webdriver.common.by import By

    # The leaderboard: one table per sweep, ranked.
    driver.get(pg_stack.url + "/dashboard/leaderboard?dataset_id=digits&metric=consistency")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#leaderboard .sweep")) == 3)
    board = carol.get("/v1/leaderboard", params={"dataset_id": "digits"}).json()
    first = driver.find_element(By.CSS_SELECTOR, f'.sweep[data-sweep-key="{board["sweeps"][0]["sweep_key"]}"]')
    names = [row.get_attribute("data-model") for row in first.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert names == [item["model_name"] for item in board["sweeps"][0]["items"]]
    # The ranked metric once, with clean accuracy beside it.
    headers = [th.get_attribute("textContent") for th in first.find_elements(By.CSS_SELECTOR, "thead th")]
    assert headers == ["Rank", "Model", "consistency", "Clean acc.", "Mean acc.", "Worst case", "Evaluation", "Finished"]
    cells = first.find_elements(By.CSS_SELECTOR, "tbody tr:first-child td")
    top = board["sweeps"][0]["items"][0]
    assert cells[3].text == f"{top['summary']['clean_accuracy'] * 100:.1f}%"
    screenshot(driver, "leaderboard")


def test_dashboard_shows_another_tenant_nothing(pg_stack, evaluations, browser):
    from selenium.webdriver.common.by import By

    driver = browser
    sign_in(driver, pg_stack.url + "/dashboard/", pg_stack.token("dash-mallory"))
    wait_for(driver, lambda d: d.find_element(By.ID, "evaluations-empty").is_displayed())
    assert driver.find_elements(By.CSS_SELECTOR, "#evaluations tbody tr") == []
    driver.get(f"{pg_stack.url}/dashboard/evaluations/{evaluations['cnn']['id']}")
    wait_for(driver, lambda d: d.find_element(By.ID, "evaluation-error").is_displayed())
    assert "no evaluation" in driver.find_element(By.ID, "evaluation-error").text
    assert not driver.find_element(By.ID, "results").is_displayed()


def test_the_service_root_leads_to_the_dashboard(pg_stack):
    response = requests.get(pg_stack.url + "/", allow_redirects=False, timeout=5)
    assert response.status_code == 302 and response.headers["Location"].endswith("/dashboard/")


def test_pages_link_a_favicon(pg_stack):
    from urllib.parse import urljoin

    for path in ("/dashboard/", "/dashboard/leaderboard", "/docs"):
        page = requests.get(pg_stack.url + path, timeout=10)
        icons = re.findall(r'<link rel="icon" type="image/png" href="([^"]+)"', page.text)
        assert len(icons) == 1, (path, icons)
        icon = requests.get(urljoin(pg_stack.url + path, icons[0]), timeout=10)
        assert icon.status_code == 200 and icon.headers["Content-Type"] == "image/png", (path, icons)
        assert Image.open(io.BytesIO(icon.content)).size == (32, 32)


def test_docs_page_has_a_proper_title_in_chromium(pg_stack, browser):
    from selenium.webdriver.common.by import By

    browser.get(pg_stack.url + "/docs")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    assert browser.title == "ShiftScore REST API"
    heading = browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert heading.startswith("ShiftScore REST API"), heading
    link = browser.find_element(By.CSS_SELECTOR, 'a[href="docs/metrics"]')
    assert link.get_attribute("href") == pg_stack.url + "/docs/metrics"

def test_fragile_samples_show_the_worst_shift_in_chromium(pg_stack, carol, evaluations, browser):
    from selenium.webdriver.common.by import By

    cnn, driver = evaluations["cnn"], browser
    sign_in(driver, f"{pg_stack.url}/dashboard/evaluations/{cnn['id']}", carol.headers["Authorization"][7:])
    loaded = ("const imgs = [...document.querySelectorAll('#examples figure img')];"
              "return imgs.length > 0 && imgs.every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)")
    wait_for(driver, lambda d: d.execute_script(loaded))
    stored = carol.get(f"/v1/evaluations/{cnn['id']}/examples", params={"limit": 24}).json()["items"]
    figures = driver.find_elements(By.CSS_SELECTOR, "#examples figure")
    assert len(figures) == min(12, len(stored)) > 0
    base = f"/v1/evaluations/{cnn['id']}/examples"
    for figure, x in zip(figures, stored):
        dx, dy = x["worst_shift"]
        paths = [img.get_attribute("data-path") for img in figure.find_elements(By.CSS_SELECTOR, "img")]
        assert paths == [f"{base}/{x['index']}.png?dx=0&dy=0&zoom=6", f"{base}/{x['index']}.png?dx={dx}&dy={dy}&zoom=6"]
        shown = re.search(r"worst → (\d+) at \((\S+), (\S+)\) · p\(label\) (\S+)", figure.text)
        assert shown.groups()[:3] == (str(x["worst_prediction"]), str(dx), str(dy)), figure.text
        assert float(shown.group(4)) == pytest.approx(x["worst_probability"], rel=0.05)
    # The worst view's pixels, read back from the page, are the API's picture of that shift.
    shown = driver.execute_script("""
        const img = document.querySelectorAll('#examples figure img')[1];
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const context = canvas.getContext('2d');
        context.drawImage(img, 0, 0);
        return [canvas.width, canvas.height, [...context.getImageData(0, 0, canvas.width, canvas.height).data]];""")
    dx, dy = stored[0]["worst_shift"]
    expected = png(carol.get(f"{base}/{stored[0]['index']}.png", params={"dx": dx, "dy": dy, "zoom": 6}))
    width, height, rgba = shown
    assert (height, width) == expected.shape[:2] == (48, 48)
    assert np.array_equal(np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3], expected)
    screenshot(driver, "fragile-samples")
    # "More samples" follows the cursor to the next page.
    more = driver.find_element(By.ID, "examples-more")
    assert more.is_displayed() == (len(stored) > 12)
    if len(stored) > 12:
        more.click()
        wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples figure")) == len(stored))
        indices = [int(f.get_attribute("data-index")) for f in driver.find_elements(By.CSS_SELECTOR, "#examples figure")]
        assert indices == [x["index"] for x in stored]


def test_the_leaderboard_opens_on_a_dataset_with_results(pg_stack, carol, evaluations, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    path = tmp_path / "empty-board.npz"
    np.savez(path, images=np.zeros((4, 8, 8), dtype=np.uint8), labels=np.arange(4))
    newest = carol.upload_dataset(path, name="no-results-yet")  # listed first, and nothing ran on it
    digits = carol.get("/v1/datasets/digits").json()
    sign_in(browser, pg_stack.url + "/dashboard/leaderboard", carol.headers["Authorization"][7:])
    sweeps = len(carol.get("/v1/leaderboard", params={"dataset_id": "digits"}).json()["sweeps"])
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#leaderboard .sweep")) == sweeps > 0)
    select = Select(browser.find_element(By.ID, "leaderboard-dataset"))
    assert select.options[0].get_attribute("value") == newest["id"]
    assert select.first_selected_option.get_attribute("value") == digits["id"]
    assert not browser.find_element(By.ID, "leaderboard-empty").is_displayed()
    assert f"dataset_id={digits['id']}" in browser.current_url
