"""/docs renders offline: Swagger UI's files come from this server (the swagger-ui-bundle package), not a CDN.
FastAPI's page loads them from cdn.jsdelivr.net, so on a machine without the internet /docs was blank."""

from __future__ import annotations

import pytest
import requests

from tests.serve.conftest import start_server


@pytest.fixture(scope="module")
def url(lm_workspace, serve_lm):
    running, _ = start_server(lm_workspace, [f"tiny-lm={serve_lm}"], max_batch=2)
    yield running.url
    running.stop()


def test_the_api_docs_page_renders_with_no_request_off_this_server(browser, url):
    page_html = requests.get(url + "/docs", timeout=30).text
    assert "cdn.jsdelivr.net" not in page_html and "/docs/assets/swagger-ui-bundle.js" in page_html
    asset = requests.get(url + "/docs/assets/swagger-ui-bundle.js", timeout=30)
    assert asset.status_code == 200 and "javascript" in asset.headers["content-type"]
    context = browser.new_context()
    elsewhere: list[str] = []

    def only_here(route):  # as offline: anything not from this server fails
        if route.request.url.startswith(url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    try:
        page = context.new_page()
        page.route("**/*", only_here)
        page.goto(url + "/docs")
        page.locator(".opblock").first.wait_for(timeout=30_000)  # the operations, drawn from /openapi.json
        assert page.locator(".opblock").count() >= 5 and "/v1/chat/completions" in page.content()
        assert elsewhere == [], elsewhere
    finally:
        context.close()
