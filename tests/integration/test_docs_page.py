"""/docs is Swagger UI served by the API itself, in headless Chromium: it renders every operation from
/openapi.json, fetches nothing from another origin, and "Try it out" sends the bearer token from Authorize."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.integration.test_dashboard import browser, screenshot, wait_for  # noqa: F401 — fixture

pytestmark = pytest.mark.integration


def test_docs_page_renders_operations_and_tries_them_with_the_token(pg_stack, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    document = __import__("requests").get(pg_stack.url + "/openapi.json", timeout=10).json()
    token = pg_stack.token("docs-reader")
    driver = browser
    driver.get(pg_stack.url + "/docs")
    driver.execute_script("sessionStorage.clear()")
    driver.get(pg_stack.url + "/docs")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    page = driver.find_element(By.TAG_NAME, "body").text
    assert "Loading" not in page and "ShiftScore REST API" in page
    shown = {(block.get_attribute("class").split("opblock-")[1].split()[0],
              block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"))
             for block in driver.find_elements(By.CSS_SELECTOR, ".opblock")}
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert shown == documented
    assert driver.find_element(By.CSS_SELECTOR, 'a[href="docs/metrics"]').is_displayed()

    # Everything the page loaded came from this server.
    origin = urlsplit(pg_stack.url).netloc
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(name.endswith("/openapi.json") for name in loaded)
    assert all(urlsplit(name).netloc == origin for name in loaded), loaded
    screenshot(driver, "docs")

    # Try it out: without a token the API answers 401; after Authorize, 200 with the bearer header.
    models = driver.find_element(By.CSS_SELECTOR, '.opblock-get .opblock-summary-path[data-path="/v1/models"]')
    models.click()
    block = models.find_element(By.XPATH, './ancestor::div[contains(@class, "opblock-get")]')
    wait_for(driver, lambda d: block.find_elements(By.CSS_SELECTOR, "button.try-out__btn"))
    block.find_element(By.CSS_SELECTOR, "button.try-out__btn").click()
    wait_for(driver, lambda d: block.find_elements(By.CSS_SELECTOR, "button.execute"))
    block.find_element(By.CSS_SELECTOR, "button.execute").click()

    def status(d) -> str | None:
        found = block.find_elements(By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status")
        return found[0].text.split()[0] if found and found[0].text.strip() else None

    assert wait_for(driver, status) == "401"
    driver.find_element(By.CSS_SELECTOR, "button.authorize").click()
    field = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, ".auth-container input[type=text]"))
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper button.authorize").click()
    driver.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper button.btn-done").click()
    block.find_element(By.CSS_SELECTOR, "button.btn-clear").click()
    block.find_element(By.CSS_SELECTOR, "button.execute").click()
    assert wait_for(driver, status) == "200"
    assert f"Authorization: Bearer {token}" in block.find_element(By.CSS_SELECTOR, ".curl-command").text
    screenshot(driver, "docs-try-it-out")
