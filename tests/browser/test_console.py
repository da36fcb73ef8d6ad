"""The console in headless Chromium against a real `agentbus serve` (Redis,
and Postgres through the sink): sign in with a tenant token, watch a job's
progress bar reach 100 %, cancel a job and see the refund the server
answered, replay a dead letter and see it leave the list, open an
invocation's audit trail, see hostile payloads rendered as text, and find
nothing of one tenant after signing in as another.

Screenshots of each view go to $CONSOLE_SCREENSHOTS (the README's are
made with CONSOLE_SCREENSHOTS=docs/console), else to a temporary folder."""

from __future__ import annotations

import os
import pathlib
import secrets
import tempfile
import threading
import time
from decimal import Decimal

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

SHOTS = pathlib.Path(os.environ.get("CONSOLE_SCREENSHOTS") or tempfile.mkdtemp(prefix="console-shots-"))
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
# What of it shows verbatim as text (payloads are shown as JSON, which
# escapes the quotes of the rest).
SHOWN = '<script>window.__pwned = 1</script><img src=x onerror='


def spawn(server, token, items, **extra):
    body = {"orchestrator_agent": "console-test", "worker_agent": "w", "task": "render", "items": items, **extra}
    status, job = server.call("POST", "/jobs", token, body)
    assert status == 201, job
    return job["id"]


def sign_in(browser, server, token):
    browser.get(server.url + "/console")
    field = WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "token"))
    field.send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "signout").is_displayed())


def go(browser, server, route):
    browser.get(server.url + "/console#" + route)


def main_text(browser):
    return browser.find_element(By.ID, "main").text


def until(browser, check, timeout=15, what="the page"):
    # Views re-render as they refresh: an element found a moment ago may
    # be gone (stale) when read; the check is then simply tried again.
    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.1,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                             ).until(lambda b: check(b))
    except Exception:
        shot(browser, "failed-" + what.replace(" ", "-"))
        raise AssertionError(f"{what} never showed it (screenshot in {SHOTS}); main says: {main_text(browser)[:2000]}")


def shot(browser, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"{name}.png"))


def work(server, token, job_id, items, every=0.05):
    """An HTTP worker finishing one item per `every` seconds."""
    done = 0
    while done < items:
        status, claimed = server.call(
            "POST", f"/jobs/{job_id}/claim?worker_instance_id=http-w&count=1", token)
        assert status == 200, claimed
        for item in claimed["items"]:
            status, body = server.call(
                "POST", f"/jobs/{job_id}/items/{item['item_id']}/complete", token,
                {"output": {"n": item["input"], "note": HOSTILE}})
            assert status == 200, body
            done += 1
        time.sleep(every)


def test_progress_cancel_and_every_view(server, browser):
    tenant = "con" + secrets.token_hex(3)
    token = server.tenant(tenant, 1000)
    watched = spawn(server, token, list(range(20)))
    sign_in(browser, server, token)
    until(browser, lambda b: "available" in main_text(b), what="the overview")
    # The job page, live, while an HTTP worker finishes its items.
    go(browser, server, f"/jobs/{watched}")
    until(browser, lambda b: b.find_element(By.ID, "job-id").text == watched, what="the job page")
    failures = []

    def run_worker():
        try:
            work(server, token, watched, 20)
        except Exception as e:  # reported below, in the test's thread
            failures.append(e)

    worker = threading.Thread(target=run_worker)
    worker.start()
    until(browser, lambda b: b.find_element(By.CSS_SELECTOR, f'progress[data-job="{watched}"]')
          .get_attribute("value") not in ("0", None), what="progress under way")
    until(browser, lambda b: b.find_element(By.CSS_SELECTOR, f'progress[data-job="{watched}"]')
          .get_attribute("value") == "100", timeout=30, what="the bar at 100")
    worker.join()
    assert not failures, failures
    until(browser, lambda b: "completed" in b.find_element(By.CSS_SELECTOR, '[data-card="status"]').text,
          what="the job completed")
    # Results carry a hostile string: shown as text, never run.
    until(browser, lambda b: SHOWN in main_text(b), what="the outputs as text")
    assert browser.execute_script("return window.__pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#main img, #main script")
    shot(browser, "job")

    # Cancel a second job: the refund shown is the server's answer.
    doomed = spawn(server, token, list(range(10)))
    go(browser, server, f"/jobs/{doomed}")
    button = until(browser, lambda b: b.find_element(By.ID, "cancel"), what="the cancel button")
    button.click()
    alert = until(browser, lambda b: b.switch_to.alert, what="the confirmation")
    assert "10 unfinished items" in alert.text, alert.text
    alert.accept()
    until(browser, lambda b: "refunded" in b.find_element(By.ID, "banner").text, what="the refund")
    status, job = server.call("GET", f"/jobs/{doomed}", token)
    assert job["status"] == "cancelled"
    refunded = Decimal(str(job["credits"]["refunded"]))
    assert refunded == Decimal("20.00")
    banner = browser.find_element(By.ID, "banner").text
    assert f"10 items cancelled, {refunded} credits refunded" in banner, banner

    go(browser, server, "/jobs")
    until(browser, lambda b: watched in main_text(b) and doomed in main_text(b), what="the job list")
    shot(browser, "jobs")
    go(browser, server, "/overview")
    until(browser, lambda b: b.find_element(By.CSS_SELECTOR, '[data-card="finished"] .value').text == "2",
          what="two jobs finished in the last hour")
    shot(browser, "overview")


def test_dead_letter_replayed_leaves_the_list(server, browser):
    token = server.tenant("dl" + secrets.token_hex(3), 1000)
    job = spawn(server, token, [{"poison": HOSTILE}, 2], max_retries=0)
    status, claimed = server.call("POST", f"/jobs/{job}/claim?worker_instance_id=w1&count=1", token)
    item = claimed["items"][0]
    status, failed = server.call("POST", f"/jobs/{job}/items/{item['item_id']}/fail", token,
                                 {"error_message": "broken input", "retry": False})
    assert status == 200, failed
    status, page = server.call("GET", "/dlq", token)
    entry = page["dead_letters"][0]["entry_id"]
    sign_in(browser, server, token)
    go(browser, server, "/dlq")
    button = until(browser, lambda b: b.find_element(By.CSS_SELECTOR, f'[data-replay="{entry}"]'),
                   what="the dead letter")
    assert "broken input" in main_text(browser)
    assert SHOWN in main_text(browser) or "poison" in main_text(browser)
    assert browser.execute_script("return window.__pwned") is None
    shot(browser, "dlq")
    button.click()
    until(browser, lambda b: "Replayed " + entry in b.find_element(By.ID, "banner").text, what="the replay")
    until(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, f'[data-replay="{entry}"]'),
          what="the list without it")
    status, again = server.call("GET", "/dlq", token)
    assert all(d["entry_id"] != entry for d in again["dead_letters"])
    # Replayed: the item is out again, a new attempt of the same index.
    status, claimed = server.call("POST", f"/jobs/{job}/claim?worker_instance_id=w2&count=5", token)
    assert item["item_index"] in [i["item_index"] for i in claimed["items"]]


def test_invocation_audit_agents_blackboard_and_sink(server, browser):
    token = server.tenant("inv" + secrets.token_hex(3), 1000)
    for instance in ("caller-1", "target-1"):
        status, body = server.call("POST", "/agents/register", token, {"agent_id": "a", "instance_id": instance})
        assert status == 201, body
    # Nobody answers: the invocation times out, and its audit row reaches Postgres.
    status, result = server.call("POST", "/invocations", token, {
        "caller_instance_id": "caller-1", "target_instance_id": "target-1",
        "request_payload": {"ask": HOSTILE}, "timeout_seconds": 1})
    assert status == 200, result
    invoke_id = result["invoke_id"]
    deadline = time.time() + 20
    while time.time() < deadline:
        status, found = server.call("GET", "/invocations?caller=caller-1", token)
        if status == 200 and found["count"] >= 1:
            break
        time.sleep(0.2)
    status, body = server.call("POST", "/agents/target-1/messages", token, {
        "from_instance_id": "caller-1", "message_type": "note", "payload": {"text": HOSTILE}})
    assert status == 201, body
    status, body = server.call("PUT", "/namespaces/scores/entries/alice", token, {"value": {"score": 7, "html": HOSTILE}})
    assert status in (200, 201), body

    sign_in(browser, server, token)
    go(browser, server, "/invocations?caller=caller-1")
    until(browser, lambda b: invoke_id in main_text(b), what="the invocation listed")
    shot(browser, "invocations")
    browser.find_element(By.LINK_TEXT, invoke_id).click()
    audit = until(browser, lambda b: b.find_element(By.ID, "audit"), what="the audit trail")
    text = audit.text
    for expected in ("target-1", "caller-1", "timeout", SHOWN):
        assert expected in text, (expected, text)
    shot(browser, "invocation")

    go(browser, server, "/agents/target-1")
    until(browser, lambda b: SHOWN in main_text(b), what="the inbox message as text")
    assert browser.execute_script("return window.__pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#main img, #main script")
    go(browser, server, "/agents")
    until(browser, lambda b: "target-1" in main_text(b), what="the agents")
    shot(browser, "agents")

    go(browser, server, "/blackboard")
    until(browser, lambda b: b.find_elements(By.LINK_TEXT, "scores"), what="the namespace").__getitem__(0).click()
    until(browser, lambda b: b.find_elements(By.LINK_TEXT, "alice"), what="the key").__getitem__(0).click()
    until(browser, lambda b: SHOWN in main_text(b), what="the value as text")
    assert browser.execute_script("return window.__pwned") is None
    shot(browser, "blackboard")

    go(browser, server, "/sink")
    until(browser, lambda b: "events waiting" in main_text(b), what="the sink")
    shot(browser, "sink")


def test_signing_in_as_another_tenant_shows_nothing_of_the_first(server, browser):
    token_a = server.tenant("ta" + secrets.token_hex(3), 100)
    token_b = server.tenant("tb" + secrets.token_hex(3), 100)
    job_a = spawn(server, token_a, [1, 2, 3])
    sign_in(browser, server, token_a)
    go(browser, server, f"/jobs/{job_a}")
    until(browser, lambda b: b.find_element(By.ID, "job-id").text == job_a, what="A's job")
    go(browser, server, "/jobs")
    until(browser, lambda b: job_a in main_text(b), what="A's job listed")
    browser.find_element(By.ID, "signout").click()
    until(browser, lambda b: b.find_element(By.ID, "token"), what="the sign-in form")
    assert browser.execute_script("return window.sessionStorage.length") == 0
    sign_in(browser, server, token_b)
    go(browser, server, "/jobs")
    until(browser, lambda b: "0 jobs" in main_text(b), what="B's empty job list")
    assert job_a not in browser.page_source
    # A's job by its URL: not found for B, and nothing cached from A shows.
    go(browser, server, f"/jobs/{job_a}")
    until(browser, lambda b: "not found" in b.find_element(By.ID, "banner").text.lower(), what="a 404")
    assert job_a not in browser.find_element(By.ID, "main").text
    # The admin token sees every tenant's sink, and reads one tenant at a
    # time, read-only; switching tenants carries nothing over.
    browser.find_element(By.ID, "signout").click()
    sign_in(browser, server, server.admin)
    until(browser, lambda b: "Every tenant" in main_text(b), what="the admin's sink")
    status, rows = server.call("GET", "/sink?limit=200")
    names = [r["tenant"] for r in rows["outboxes"]]
    a_name = next(n for n in names if n.startswith("ta"))
    b_name = next(n for n in names if n.startswith("tb"))
    until(browser, lambda b: b.find_element(By.CSS_SELECTOR, f'[data-read-as="{a_name}"]'), what="A's row").click()
    go(browser, server, "/jobs")
    until(browser, lambda b: job_a in main_text(b), what="A's job, read by the admin")
    go(browser, server, f"/jobs/{job_a}")
    until(browser, lambda b: b.find_element(By.ID, "job-id").text == job_a, what="A's job page")
    assert not browser.find_elements(By.ID, "cancel"), "the admin's view is read-only"
    go(browser, server, "/sink")
    until(browser, lambda b: b.find_element(By.CSS_SELECTOR, f'[data-read-as="{b_name}"]'), what="B's row").click()
    go(browser, server, "/jobs")
    until(browser, lambda b: "0 jobs" in main_text(b), what="B's jobs, read by the admin")
    assert job_a not in browser.find_element(By.ID, "main").text
    shot(browser, "admin")
