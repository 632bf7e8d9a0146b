"""The dashboard's evaluation page with a rotation sweep, in headless Chromium on the real stack."""

from __future__ import annotations

import numpy as np
import pytest

from tests.integration.test_dashboard import browser, png, screenshot, sign_in, wait_for  # noqa: F401 (fixture)
from tests.models import DIGITS_INPUT

pytestmark = pytest.mark.integration

ROTATION = {"dataset_id": "digits", "angle": {"range": [-45, 45], "step": 15}, "max_samples": 120, "seed": 2}


@pytest.fixture(scope="module")
def dana(pg_stack):
    return pg_stack.session("dash-dana")


@pytest.fixture(scope="module")
def rotation(dana, digits_model_file) -> dict:
    model = dana.wait_model(dana.upload_model(digits_model_file, DIGITS_INPUT, name="digits-cnn")["id"])
    done = dana.wait_evaluation(dana.post("/v1/evaluations", json={**ROTATION, "model_id": model["id"]}).json()["id"])
    assert done["status"] == "succeeded", done
    return done


def test_curves_and_heatmap_axes_as_pictures(dana, rotation):
    curves = png(dana.get(f"/v1/evaluations/{rotation['id']}/curves.png"))
    assert curves.shape[0] > 200 and curves.std() > 20
    by_angle = png(dana.get(f"/v1/evaluations/{rotation['id']}/heatmap.png?x=angle&y=dy"))
    at = dana.get(f"/v1/evaluations/{rotation['id']}/heatmap.png?x=angle&y=dy&at_angle=15")
    assert by_angle.std() > 20 and at.status_code == 200
    missing = dana.get(f"/v1/evaluations/{rotation['id']}/heatmap.png?x=angle&y=dy&at_angle=7")
    assert missing.status_code == 422 and "at_angle" in missing.json()["detail"]


def test_the_evaluation_page_shows_a_rotation_sweep(pg_stack, dana, rotation, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    sign_in(driver, pg_stack.url + "/dashboard/", dana.headers["Authorization"].removeprefix("Bearer "))
    driver.get(f"{pg_stack.url}/dashboard/evaluations/{rotation['id']}")
    loaded = "return [...document.querySelectorAll('#results img:not([hidden])')].every(i => i.complete && i.naturalWidth > 0)"
    shown = "return ['curves', 'heatmap'].every(id => (document.getElementById(id).getAttribute('src') || '').startsWith('blob:'))"
    try:
        wait_for(driver, lambda d: d.execute_script(shown) and d.execute_script(loaded))
    except Exception:
        raise AssertionError(driver.find_element(By.ID, "evaluation-error").text) from None
    assert "angle -45…45 step 15" in driver.find_element(By.ID, "evaluation-meta").text
    assert driver.find_element(By.ID, "curves-card").is_displayed()
    assert driver.find_element(By.ID, "heatmap-axes").is_displayed()
    assert driver.find_element(By.ID, "heatmap").get_attribute("data-path").endswith("x=angle&y=dx")
    assert f"{rotation['summary']['worst_case_accuracy'] * 100:.1f}%" in driver.find_element(By.ID, "summary").text

    curves = driver.find_element(By.ID, "curves")
    box = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.x, r.y, r.width, r.height]",
                                curves)
    pixels = screenshot(driver, "rotation-evaluation")
    expected = png(dana.get(f"/v1/evaluations/{rotation['id']}/curves.png"))
    x, y, w, h = (round(v) for v in box)
    assert (w, h) == (expected.shape[1], expected.shape[0])
    assert np.abs(pixels[y:y + h, x:x + w].astype(int) - expected).mean() < 2  # the curves are on the screen

    Select(driver.find_element(By.ID, "heatmap-y")).select_by_value("dy")
    wait_for(driver, lambda d: d.find_element(By.ID, "heatmap").get_attribute("data-path").endswith("x=angle&y=dy"))


def test_fragile_samples_show_the_whole_worst_transform(pg_stack, dana, rotation, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    driver = browser
    sign_in(driver, f"{pg_stack.url}/dashboard/evaluations/{rotation['id']}", dana.headers["Authorization"][7:])
    loaded = ("const imgs = [...document.querySelectorAll('#examples figure img')];"
              "return imgs.length > 0 && imgs.every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)")
    wait_for(driver, lambda d: d.execute_script(loaded))
    stored = dana.get(f"/v1/evaluations/{rotation['id']}/examples", params={"limit": 12}).json()["items"]
    figures = driver.find_elements(By.CSS_SELECTOR, "#examples figure")
    assert len(figures) == len(stored) > 0
    base = f"/v1/evaluations/{rotation['id']}/examples"
    for figure, x in zip(figures, stored):
        worst = x["worst_transform"]
        assert worst["angle"] in (-45, -30, -15, 0, 15, 30, 45), worst
        paths = [img.get_attribute("data-path") for img in figure.find_elements(By.CSS_SELECTOR, "img")]
        zoom = paths[0].rsplit("zoom=", 1)[1]
        query = "&".join(f"{axis}={worst[axis]}" for axis in ("dx", "dy", "angle", "scale", "brightness"))
        assert paths[1] == f"{base}/{x['index']}.png?{query}&zoom={zoom}"
        where = f"({worst['dx']}, {worst['dy']})" + (f", {worst['angle']}°" if worst["angle"] else "")
        assert f"worst → {x['worst_prediction']} at {where} · p(label)" in figure.text, figure.text
        assert f"of {rotation['summary']['num_shifts']} transforms flip" in figure.text
    # The worst view on the page is the API's picture under the whole transform.
    turned = next((i for i, x in enumerate(stored) if x["worst_transform"]["angle"]), 0)
    shown = driver.execute_script("""
        const img = document.querySelectorAll('#examples figure')[arguments[0]].querySelectorAll('img')[1];
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const context = canvas.getContext('2d');
        context.drawImage(img, 0, 0);
        return [canvas.width, canvas.height, [...context.getImageData(0, 0, canvas.width, canvas.height).data]];""",
                                  turned)
    zoom = int(figures[turned].find_elements(By.CSS_SELECTOR, "img")[1].get_attribute("data-path").rsplit("=", 1)[1])
    expected = png(dana.get(f"{base}/{stored[turned]['index']}.png", params={**stored[turned]["worst_transform"],
                                                                           "zoom": zoom}))
    width, height, rgba = shown
    assert np.array_equal(np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3], expected)
