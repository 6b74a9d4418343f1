"""The gateway's /ui page in a real headless Chromium, against the real gateway app on a real port.

The gateway ASGI app (``create_app``) is served by uvicorn on 127.0.0.1 in a background thread, with
the encoder and predictor stand-ins of ``test_gateway`` wired in through ``httpx.ASGITransport`` and
the session's real redis-server as its decision store. Chromium is driven by Selenium through
Debian's ``chromium`` and ``chromium-driver`` packages. The machine has no internet: the driver path
is given explicitly and Selenium Manager is made to fail loudly should anything ever call it.
A missing browser or driver is a test failure, never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import uvicorn

from test_gateway import MODEL, THRESHOLDS, EncoderStandIn, PredictorStandIn
from vigil.redis_server import free_port
from vigil.runner import GRACEFUL_STOP_S, create_api_key
from vigil_contracts.thresholds import LABELS
from vigil_gateway.app import create_app
from vigil_gateway.settings import GatewaySettings

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = (
    "apt-get install -y --no-install-recommends chromium chromium-driver "
    "(and `pip install selenium` into the venv)"
)
REDIS_DB = 9  # db 0 holds Feast's online store, test_gateway uses 7
WAIT_S = 10.0  # upper bound of every explicit wait; they return as soon as the condition holds

try:  # imported here so that a missing selenium fails the tests below with a clear message
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.selenium_manager import SeleniumManager
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    SELENIUM_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    SELENIUM_ERROR = f"selenium is not importable ({exc}); install it: {INSTALL_HINT}"


class UiEncoderStandIn(EncoderStandIn):
    """The encoder stand-in, where the ids the page is prefilled with (e.g. ``card_00042``), unknown
    to its tiny online store, read the profiles of the known ``card_good``/``m_good``/``dev_known``,
    so the prefilled transaction gets a real score instead of an ``uncertain`` for missing features.
    """

    KNOWN: ClassVar[dict[str, str]] = {
        "card_id": "card_good",
        "merchant_id": "m_good",
        "device_id": "dev_known",
    }
    ALIASED_PREFIX = ("card_0", "merchant_0", "device_0")

    def _row(self, entities: dict[str, str], request: dict[str, Any]) -> dict[str, Any]:
        aliased = {
            key: self.KNOWN[key]
            if key in self.KNOWN and value.startswith(self.ALIASED_PREFIX)
            else value
            for key, value in entities.items()
        }
        return super()._row(aliased, request)


@dataclass
class LiveGateway:
    base_url: str
    api_key: str
    encoder: UiEncoderStandIn
    predictor: PredictorStandIn


#: What ``vigil features`` writes, with the ids the stand-ins' online store knows.
SAMPLES = {
    "samples": [
        {
            "name": "regular purchase",
            "expect_fraud": False,
            "transaction": {
                "transaction_id": "sample-legit-0",
                "card_id": "card_good",
                "merchant_id": "m_good",
                "amount": 61.3,
                "currency": "EUR",
                "timestamp": "2026-01-10T14:12:00Z",
                "channel": "ecom",
                "device_id": "dev_known",
                "ip_address": "10.1.0.7",
                "country": "DE",
            },
        },
        {
            "name": "brand-new card",
            "expect_fraud": False,
            "transaction": {
                "transaction_id": "sample-newcard-0",
                "card_id": "new-card-000",
                "merchant_id": "m_good",
                "amount": 61.3,
                "currency": "EUR",
                "timestamp": "2026-01-10T11:12:00Z",
                "channel": "ecom",
                "ip_address": "10.9.0.7",
                "country": "DE",
            },
        },
    ]
}


@pytest.fixture(scope="module")
def live_gateway(redis_server, tmp_path_factory) -> Iterator[LiveGateway]:
    """The real gateway app served by uvicorn on a free port, until the module's tests are done."""
    encoder, predictor = UiEncoderStandIn(), PredictorStandIn()
    samples = tmp_path_factory.mktemp("samples") / "samples.json"
    samples.write_text(json.dumps(SAMPLES))
    settings = GatewaySettings(
        samples_path=samples,
        environment="test",
        redis_url=f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
        encoder_url="http://encoder.test",  # reached through the transport below
        predictor_url="http://predictor.test",
        # Generous per-hop timeouts: a browser test must not go uncertain on a busy machine.
        encoder_timeout_s=1.0,
        predictor_timeout_s=1.0,
        total_budget_s=2.5,
        max_transaction_age_s=0,  # the stand-ins' transactions are from 2024
        max_features_lead_s=0,
        log_level="WARNING",
    )
    app = create_app(
        settings,
        encoder_transport=httpx.ASGITransport(encoder.app),
        predictor_transport=httpx.ASGITransport(predictor.app),
    )
    api_key = create_api_key(settings.redis_url, settings.auth_secret.get_secret_value(), "ui-test")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_STOP_S,  # as the services' command line
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn-ui-test", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during startup (see the captured log)"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        with httpx.Client(base_url=base_url, trust_env=False, timeout=2.0) as client:
            while (ready := client.get("/readyz")).status_code != 200:  # model metadata loaded
                assert time.monotonic() < deadline, f"gateway never became ready: {ready.text}"
                time.sleep(0.02)
        yield LiveGateway(base_url=base_url, api_key=api_key, encoder=encoder, predictor=predictor)
    finally:
        server.should_exit = True
        thread.join(timeout=GRACEFUL_STOP_S + 10)  # then the app's own shutdown
        assert not thread.is_alive(), "uvicorn did not stop"


def _refuse_selenium_manager(*_: Any, **__: Any) -> Any:
    raise AssertionError(
        "Selenium Manager was invoked (it would try to download a driver); "
        f"the driver path must be given explicitly ({CHROMEDRIVER})"
    )


@pytest.fixture(scope="module")
def browser(live_gateway, tmp_path_factory) -> Iterator[WebDriver]:
    """Headless Debian Chromium driven by its chromedriver; a failure, not a skip, when missing.

    Started after the gateway and so quit before it: the gateway's stop does not wait on the
    browser's open sockets (it once took more than the 10 s the teardown allows)."""
    if SELENIUM_ERROR:
        pytest.fail(SELENIUM_ERROR, pytrace=False)
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            found = shutil.which(Path(path).name)
            pytest.fail(
                f"{path} is missing (on PATH: {found}); install it: {INSTALL_HINT}", pytrace=False
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SeleniumManager, "binary_paths", _refuse_selenium_manager)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(WAIT_S)
            yield driver
        finally:
            driver.quit()


def open_ui(browser: WebDriver, gateway: LiveGateway) -> WebDriverWait:
    browser.get(gateway.base_url + "/ui")
    wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.05)
    # The page's script ran: it fills in a fresh transaction id.
    wait.until(lambda d: d.find_element(By.ID, "transaction_id").get_attribute("value"))
    key = browser.find_element(By.ID, "api_key")  # the page asks for a key
    key.clear()
    key.send_keys(gateway.api_key)
    return wait


def wait_for_result(wait: WebDriverWait, state: str) -> Any:
    result = wait.until(
        EC.presence_of_element_located(
            (By.CSS_SELECTOR, f'#result[data-state="{state}"], #result[data-state="error"]')
        )
    )
    assert result.get_attribute("data-state") == state, result.text
    return result


def field(result: Any, name: str) -> str:
    return result.find_element(By.CSS_SELECTOR, f'dd[data-field="{name}"]').text


def test_scores_the_prefilled_transaction_like_the_api(
    browser: WebDriver, live_gateway: LiveGateway, tmp_path: Path
) -> None:
    wait = open_ui(browser, live_gateway)
    assert browser.title.startswith("Vigil")
    prefilled = {
        name: browser.find_element(By.ID, name).get_attribute("value")
        for name in (
            "transaction_id",
            "card_id",
            "merchant_id",
            "amount",
            "currency",
            "timestamp",
            "channel",
        )
    }
    assert all(prefilled.values()), prefilled
    assert browser.find_element(By.ID, "result").get_attribute("data-state") == "empty"
    sent = browser.execute_script("return payload();")  # exactly what the page POSTs

    browser.find_element(By.ID, "score").click()
    result = wait_for_result(wait, "decision")

    label = result.find_element(By.CSS_SELECTOR, '[data-testid="label"]')
    shown = label.get_attribute("data-label")
    assert shown in LABELS
    assert label.text == shown.replace("_", " ")
    assert label.is_displayed()
    reasons = result.find_elements(By.CSS_SELECTOR, '[data-testid="reasons"] > li')
    assert reasons, "no reasons listed"

    with httpx.Client(
        base_url=live_gateway.base_url,
        trust_env=False,
        timeout=5.0,
        headers={"authorization": f"Bearer {live_gateway.api_key}"},
    ) as api:
        stored = api.post("/v1/transactions/score", json=sent)  # the decision the page got
        fresh = api.post("/v1/transactions/score", params={"rescore": "true"}, json=sent)
    assert stored.status_code == 200 and fresh.status_code == 200, (stored.text, fresh.text)
    stored_body, fresh_body = stored.json(), fresh.json()
    assert (
        stored_body["cached"] is True
        and stored_body["transaction_id"] == prefilled["transaction_id"]
    )
    assert fresh_body["cached"] is False
    for answer in (stored_body, fresh_body):
        assert answer["label"] == shown
        assert answer["degraded"] is False
    assert fresh_body["score"] == pytest.approx(stored_body["score"])
    assert shown == fresh_body["label"] != "uncertain"  # the stand-ins know the prefilled profile
    assert field(result, "score") == f"{stored_body['score']:.4f}"
    assert field(result, "model") == f"{MODEL} v{stored_body['model']['version']}"
    assert stored_body["model"]["version"] in THRESHOLDS
    assert field(result, "cached") == "false" and field(result, "degraded") == "false"
    # The page's own request's id (the API's repeat above got an id of its own).
    assert field(result, "request-id") not in (
        "",
        stored_body["request_id"],
        fresh_body["request_id"],
    )
    assert [li.get_attribute("data-code") for li in reasons] == [
        r["code"] for r in stored_body["reasons"]
    ]
    for li, reason in zip(reasons, stored_body["reasons"], strict=True):
        assert li.text.startswith(reason["text"])

    # (3) What it looks like: a PNG of the page with the decision on it.
    shot = tmp_path / "ui-decision.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    if os.environ.get("VIGIL_UI_SCREENSHOT_DIR"):  # to look at it by hand
        shutil.copy(shot, Path(os.environ["VIGIL_UI_SCREENSHOT_DIR"]) / shot.name)


def test_an_invalid_amount_shows_the_problem_naming_the_field(
    browser: WebDriver, live_gateway: LiveGateway, tmp_path: Path
) -> None:
    wait = open_ui(browser, live_gateway)
    calls_before = len(live_gateway.encoder.calls)
    amount = browser.find_element(By.ID, "amount")
    amount.clear()
    amount.send_keys("-5")
    assert amount.get_attribute("value") == "-5"
    browser.find_element(By.ID, "score").click()
    result = wait_for_result(wait, "problem")

    label = result.find_element(By.CSS_SELECTOR, '[data-testid="label"]')
    assert label.get_attribute("data-status") == "422"
    assert label.text.startswith("422 ")
    assert "amount" in field(result, "detail")
    params = result.find_elements(By.CSS_SELECTOR, '[data-testid="invalid-params"] > li')
    assert [li.get_attribute("data-param") for li in params] == ["amount"]
    assert params[0].find_element(By.TAG_NAME, "code").text == "amount"
    assert "greater than 0" in params[0].text
    assert field(result, "request-id")  # the id to quote to support
    assert len(live_gateway.encoder.calls) == calls_before  # rejected before any scoring
    assert browser.find_element(By.ID, "score").is_enabled()  # ready for a corrected submit

    shot = tmp_path / "ui-problem.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("VIGIL_UI_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["VIGIL_UI_SCREENSHOT_DIR"]) / shot.name)


def test_a_sample_button_fills_the_form_and_gets_a_real_decision(
    browser: WebDriver, live_gateway: LiveGateway
) -> None:
    wait = open_ui(browser, live_gateway)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '#samples[data-state="ready"]')))
    buttons = browser.find_elements(By.CSS_SELECTOR, '[data-testid="samples"] > button')
    assert [b.get_attribute("data-sample") for b in buttons] == [
        s["name"] for s in SAMPLES["samples"]
    ]

    buttons[0].click()  # the first click: filled in and scored at once
    result = wait_for_result(wait, "decision")
    sample = SAMPLES["samples"][0]["transaction"]
    sent = browser.execute_script("return payload();")
    assert sent["card_id"] == sample["card_id"] and sent["device_id"] == sample["device_id"]
    assert sent["transaction_id"].startswith("sample-legit-0-")
    assert sent["timestamp"][11:16] == "14:12"  # the same time of day, on a recent day
    label = result.find_element(By.CSS_SELECTOR, '[data-testid="label"]').get_attribute(
        "data-label"
    )
    assert label in LABELS and label != "uncertain"
    assert result.find_elements(By.CSS_SELECTOR, '[data-testid="reasons"] > li')
    assert field(result, "cached") == "false" and field(result, "degraded") == "false"

    buttons[0].click()  # again: a fresh id, so a fresh decision rather than the stored one
    wait.until(
        lambda d: d.execute_script("return payload().transaction_id;") != sent["transaction_id"]
    )
    again = browser.execute_script("return payload().transaction_id;")
    assert again.startswith(sent["transaction_id"])
    wait.until(
        lambda d: (
            d.find_element(By.ID, "result").get_attribute("data-state") == "decision"
            and f'"{again}"'
            in d.find_element(By.CSS_SELECTOR, "#result pre").get_attribute("textContent")
        )
    )
    assert field(browser.find_element(By.ID, "result"), "cached") == "false"
