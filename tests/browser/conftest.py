"""Fixtures for the console's browser tests: a live `agentbus serve` whose
sink mirrors into a Postgres database of its own (the Python client's test
helpers, loaded from clients/python/tests), and headless Chromium driven
through ChromeDriver (Debian's chromium and chromium-driver)."""

from __future__ import annotations

import importlib.util
import pathlib
import secrets
import shutil

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("client_helpers", REPO / "clients/python/tests/conftest.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

SHOTS = REPO / "docs" / "console"


@pytest.fixture(scope="module")
def server():
    db = helpers.Database()
    prefix = "br" + secrets.token_hex(4)
    s = helpers.Server(prefix, db)
    s.database = db
    yield s
    s.stop()
    helpers._clean(prefix)
    db.drop()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,760", "--force-device-scale-factor=1",
                 f"--user-data-dir=/tmp/agentbus-chromium-{secrets.token_hex(4)}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
