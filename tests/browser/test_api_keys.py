"""The web page against a service that needs API keys (`GAZER_API_KEYS`): the key dialog on 401,
the key kept in localStorage and sent on every call, job progress read over a fetch()-based
event stream (EventSource cannot send the key), artifact images fetched with the key, 403 shown
as a problem. Screenshots of the dialog land in test-output/screenshots/."""

from __future__ import annotations


import httpx
import pytest

from schemas.api_keys import create_key
from support import chelsea, encode
from tests.api.test_model_refusals import onnx_classifier
from tests.browser.chromium import LAPTOP, PHONE, PIXEL_DIFF, start_flamingo_maximization
from tests.live_service import LiveService

pytestmark = pytest.mark.browser

DIALOG = "dialog.key-dialog[open]"

# Counts the server-sent events the page reads, from a clone of each /events response, and
# keeps the headers each /events request was sent with.
SSE_PROBE = """(() => {
  window.__sse = {requests: [], progress: 0, end: 0};
  const original = window.fetch;
  window.fetch = async (url, init = {}) => {
    const response = await original(url, init);
    if (String(url).endsWith('/events')) {
      window.__sse.requests.push(Object.fromEntries(new Headers(init.headers || {}).entries()));
      const reader = response.clone().body.getReader();
      const decoder = new TextDecoder();
      (async () => {
        for (;;) {
          const {value, done} = await reader.read().catch(() => ({done: true}));
          if (done) break;
          const text = decoder.decode(value, {stream: true});
          window.__sse.progress += (text.match(/^event: progress$/gm) || []).length;
          window.__sse.end += (text.match(/^event: end$/gm) || []).length;
        }
      })();
    }
    return response;
  };
})();"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    admin, _ = create_key(path, ["admin"], "browser tests")
    predict_only, _ = create_key(path, ["predict"], "browser tests, predict only")
    jobs_only, _ = create_key(path, ["jobs"], "browser tests, jobs only")
    return {"path": path, "admin": admin, "predict": predict_only, "jobs": jobs_only}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, keys):
    with LiveService(tmp_path_factory.mktemp("keyed-service"), api_keys=keys["path"]) as live:
        yield live


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("key-photos") / "chelsea.jpg"
    path.write_bytes(encode(chelsea()))
    return path


def new_page(browser, stored_key: str | None = None, viewport=LAPTOP, **options):
    # bypass_csp: Playwright's polling runs the tests' string predicates as code, which the policy refuses
    context = browser.new_context(viewport=viewport, device_scale_factor=options.pop("scale", 1), bypass_csp=True,
                                  **options)
    if stored_key is not None:
        context.add_init_script(f"localStorage.setItem('gazer.apiKey', {stored_key!r})")
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return context, page, errors


@pytest.fixture
def fresh(browser):
    """A page with nothing in localStorage."""
    context, page, errors = new_page(browser)
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def enter_key(page, key: str) -> None:
    page.fill("#api-key-input", key)
    page.get_by_role("button", name="Save key").click()


def test_the_key_dialog_asks_once_then_explain_works_and_the_key_is_kept(fresh, keyed, keys, photo, shots):
    page = fresh
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda request: sent.append((request.url, request.headers.get("authorization")))
            if "/v1/" in request.url else None)
    page.goto(f"{keyed.url}/#explain")
    dialog = page.locator(DIALOG)
    dialog.wait_for()
    assert "needs an API key" in dialog.inner_text()
    assert page.locator("#key-btn").get_attribute("data-state") == "needed"
    assert page.evaluate("document.activeElement.id") == "api-key-input"
    page.screenshot(path=str(shots / "api-key-dialog-laptop.png"), animations="disabled")
    # a wrong key: the call is tried again, answered 401 again, and the dialog says so
    enter_key(page, "gz_00000000_not-a-real-key")
    page.wait_for_selector(f"{DIALOG} .key-error:not([hidden])")
    assert "not accepted" in page.locator(".key-error").inner_text()
    page.screenshot(path=str(shots / "api-key-dialog-rejected-laptop.png"), animations="disabled")
    # the right one: the waiting calls go through, the view loads
    enter_key(page, keys["admin"])
    page.wait_for_selector("body[data-ready=explain]")
    page.wait_for_function("document.querySelector('#method-select').options.length > 0")
    assert page.locator(DIALOG).count() == 0
    assert page.evaluate("localStorage.getItem('gazer.apiKey')") == keys["admin"]
    assert page.locator("#key-btn").get_attribute("data-state") == "set"
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector(".result-card img.original")
    page.click("#explain-btn")
    page.wait_for_selector(".result-card .map-canvas[data-target]")
    assert page.evaluate(PIXEL_DIFF, [".result-card .map-canvas", ".result-card img.original"]) > 10
    explain_calls = [auth for url, auth in sent if url.endswith("/explain")]
    assert explain_calls and all(auth == f"Bearer {keys['admin']}" for auth in explain_calls)
    # a reload keeps the key: no dialog, the models load at once
    page.reload()
    page.wait_for_selector("body[data-ready=explain]")
    page.wait_for_function("document.querySelector('#method-select').options.length > 0")
    assert page.locator(DIALOG).count() == 0
    assert page.locator("#key-btn").get_attribute("data-state") == "set"


def test_a_job_streams_progress_with_the_key_and_its_images_load(browser, keyed, keys, shots):
    context, page, errors = new_page(browser, keys["admin"])
    context.add_init_script(SSE_PROBE)
    try:
        page.goto(f"{keyed.url}/#jobs")
        page.wait_for_selector("body[data-ready=jobs]")
        start_flamingo_maximization(page)
        page.wait_for_selector(".job-card[data-live=true]")
        page.wait_for_selector('.job-card[data-state="succeeded"] .gallery-item img', timeout=90_000)
        sse = page.evaluate("window.__sse")
        assert sse["requests"] and all(h.get("authorization") == f"Bearer {keys['admin']}" for h in sse["requests"]), sse
        assert sse["progress"] >= 1 and sse["end"] == 1, sse
        card = page.locator(".job-card").first
        assert card.get_attribute("data-live") is None          # closed at `end`
        assert page.locator(".toast", has_text="Activation maximization succeeded").count() == 1
        assert "Live updates stopped" not in card.inner_text()
        image = page.locator(".gallery-item img").first
        assert image.get_attribute("src").startswith("blob:")
        assert page.evaluate("document.querySelector('.gallery-item img').naturalWidth") == 64
        assert page.locator(".gallery-item a").first.get_attribute("href").startswith("blob:")
        assert page.locator(DIALOG).count() == 0
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shots / "jobs-keyed-laptop.png"), animations="disabled")
    finally:
        context.close()
    assert not errors, errors


def test_another_keys_job_list_does_not_keep_the_last_keys_cards_or_errors(browser, keyed, keys):
    context, page, errors = new_page(browser, keys["admin"])
    try:
        page.goto(f"{keyed.url}/#jobs")
        page.wait_for_selector("body[data-ready=jobs]")
        start_flamingo_maximization(page)
        page.wait_for_selector(".job-card")
        page.click("#key-btn")
        enter_key(page, keys["predict"])   # no jobs scope: the listing's 403
        page.click("#jobs-refresh")
        page.wait_for_selector("#job-list .problem")
        page.click("#key-btn")
        enter_key(page, keys["jobs"])      # sees its own jobs: none
        page.click("#jobs-refresh")
        page.wait_for_selector("#job-list .empty")
        assert page.locator(".job-card").count() == 0 and page.locator("#job-list .problem").count() == 0
        assert page.locator("#dataset-message .problem").count() == 0
    finally:
        context.close()
    assert not errors, errors


def test_a_wrong_stored_key_shows_the_dialog_and_the_top_bar_changes_it(browser, keyed, keys, shots):
    context, page, errors = new_page(browser, "gz_12345678_revoked-or-mistyped")
    try:
        page.goto(f"{keyed.url}/#models")
        page.wait_for_selector(f"{DIALOG} .key-error:not([hidden])")
        assert "not accepted" in page.locator(".key-error").inner_text()
        # the top bar says so too, not "set"
        assert page.locator("#key-btn").get_attribute("data-state") == "rejected"
        assert page.locator("#key-btn .key-state").inner_text() == "not accepted"
        # cancelling leaves the 401 as a problem, with a way back to the dialog
        page.get_by_role("button", name="Cancel").click()
        problem = page.locator("#model-list .problem")
        problem.wait_for()
        assert "401" in problem.inner_text()
        problem.get_by_role("button", name="Enter API key").click()
        page.locator(DIALOG).wait_for()
        assert "gz_12345678_" in page.locator(".key-current").inner_text()
        assert "(not accepted)" in page.locator(".key-current").inner_text()
        page.screenshot(path=str(shots / "api-key-dialog-manage-laptop.png"), animations="disabled")
        enter_key(page, keys["admin"])
        page.wait_for_selector('.model-card[data-model="efficientnet_lite0"]')
        assert page.locator("#key-btn").get_attribute("data-state") == "set"
        # forget from the top bar: the next call asks again
        page.click("#key-btn")
        page.get_by_role("button", name="Forget key").click()
        page.locator(DIALOG).wait_for()
        assert page.evaluate("localStorage.getItem('gazer.apiKey')") is None
        assert page.locator(".key-forget").is_hidden()
    finally:
        context.close()
    assert not errors, errors


def test_a_key_without_the_scope_gets_a_readable_403_not_the_dialog(browser, keyed, keys):
    context, page, errors = new_page(browser, keys["predict"])
    try:
        page.goto(f"{keyed.url}/#jobs")
        page.wait_for_selector("body[data-ready=jobs]")
        problem = page.locator("#dataset-message .problem")
        problem.wait_for()
        text = problem.inner_text()
        assert "403" in text and "scope" in text, text
        assert page.locator(DIALOG).count() == 0
        # the fine-tune form does not tell the person to upload a data set they may not list
        page.wait_for_function("[...document.querySelectorAll('.dataset-select option')]"
                               ".some((option) => option.textContent === 'The data sets could not be listed')")
        assert "Upload a data set first" not in page.locator(".dataset-select").first.inner_text()
    finally:
        context.close()
    assert not errors, errors


def test_a_key_without_the_admin_scope_is_told_why_models_are_not_uploaded_pinned_or_deleted(browser, keyed, keys,
                                                                                             tmp_path):
    onnx_file = tmp_path / "tiny.onnx"
    onnx_file.write_bytes(onnx_classifier().SerializeToString())
    uploaded = httpx.post(f"{keyed.url}/v1/models", headers={"X-API-Key": keys["admin"]}, data={"name": "keyed-tiny", "input_size": 32},
                          files={"onnx": ("tiny.onnx", onnx_file.read_bytes())}, timeout=120)
    assert uploaded.status_code == 201, uploaded.text
    context, page, errors = new_page(browser, keys["predict"])   # reads models, may not change them
    try:
        page.goto(f"{keyed.url}/#models")
        card = page.locator('.model-card[data-model="keyed-tiny"]')
        card.wait_for()
        page.locator(".upload-panel > summary").click()
        form = page.locator("#model-upload-form")
        form.locator('input[name="format"][value="onnx"]').check()
        form.locator("#upload-name").fill("keyed-upload")
        form.locator("#upload-file").set_input_files(str(onnx_file))
        form.get_by_role("button", name="Upload").click()
        problem = form.locator("#upload-message .problem")
        problem.wait_for()
        assert "403" in problem.inner_text() and "'admin' scope" in problem.inner_text(), problem.inner_text()
        for button, confirm, scope in (("Pin keyed-tiny@1", "Pin v1", "'admin' scope"),
                                       ("Delete keyed-tiny@1", "Delete v1", "'jobs' scope")):  # and the name's key
            card.get_by_role("button", name=button).click()
            card.locator(".confirm").get_by_role("button", name=confirm).click()
            refused = card.locator(".model-message .problem")
            refused.wait_for()
            assert "403" in refused.inner_text() and scope in refused.inner_text(), refused.inner_text()
        assert page.locator(DIALOG).count() == 0
    finally:
        context.close()
    assert not errors, errors


def test_the_key_dialog_fits_a_phone(browser, keyed, shots):
    context, page, errors = new_page(browser, viewport=PHONE, scale=2, is_mobile=True, has_touch=True)
    try:
        page.goto(f"{keyed.url}/#explain")
        page.locator(DIALOG).wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        box = page.locator(DIALOG).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        page.screenshot(path=str(shots / "api-key-dialog-phone.png"), animations="disabled")
    finally:
        context.close()
    assert not errors, errors
