"""Headless Chromium for the browser tests, and `ldm serve` running on a free local port.

The browser is Debian's ``chromium`` with its ``chromium-driver`` and pip's ``selenium`` (`make test` installs
all three). Without them the tests skip, unless ``LDMKIT_REQUIRE_BROWSER=1`` (set by `make test`, so CI never
skips them silently): then a missing browser is a failure.
"""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

# The browser must not reach out on its own (Google's update, sync and safe-browsing hosts): this machine refuses.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-gpu",
                  "--window-size=1400,1000")
SERVER_START_S = 180  # generous: importing torch and gradio on 2 busy cores


def _program(name: str) -> str | None:
    found = shutil.which(name) or f"/usr/bin/{name}"
    return found if os.access(found, os.X_OK) else None


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver; skips (or fails under LDMKIT_REQUIRE_BROWSER=1) when one is missing."""
    paths = {name: _program(name) for name in ("chromium", "chromedriver")}
    missing = [name for name, path in paths.items() if path is None]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium (pip)")
    if missing:
        reason = f"the browser test needs {', '.join(missing)}: `make test` installs them"
        if os.environ.get("LDMKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (LDMKIT_REQUIRE_BROWSER=1 forbids skipping)")
        pytest.skip(reason)
    return paths["chromium"], paths["chromedriver"]


@pytest.fixture(scope="module")
def driver(chromium, tmp_path_factory):
    """A headless Chromium with a fresh profile that records its console and network requests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, chromedriver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(chromedriver))
    yield browser
    browser.quit()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``ldm serve`` of one model directory in a subprocess; ``log()`` is what it printed."""

    def __init__(self, model_dir: Path, log_path: Path):
        self.port, self.log_path = _free_port(), log_path
        self.url = f"http://127.0.0.1:{self.port}/"
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ldmkit.cli.main", "serve", "--model", str(model_dir), "--device", "cpu",
                 "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"ldm serve exited with status {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        pytest.fail(f"ldm serve did not answer on {self.url} within {SERVER_START_S} s:\n{self.log()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def serve(chromium, tmp_path_factory):
    """``serve({name: model_dir})`` → ``{name: Server}``, all started at once and stopped after the module."""
    servers: list[Server] = []

    def start(model_dirs: dict[str, Path]) -> dict[str, Server]:
        logs = tmp_path_factory.mktemp("serve-logs")
        started = {name: Server(path, logs / f"{name}.log") for name, path in model_dirs.items()}
        servers.extend(started.values())
        for server in started.values():
            server.wait_until_up()
        return started

    yield start
    for server in servers:
        server.stop()
