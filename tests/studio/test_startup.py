"""`python app.py`: answers within seconds (torch waits for the first job), and --auth guards the door."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AuthenticationError

from tests.studio.conftest import TINY, free_port

REPO = Path(__file__).resolve().parents[2]
STARTUP_GOAL_S = 10.0


def test_importing_the_studio_leaves_torch_for_the_first_job():
    code = ("import sys, app, studio.shell; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def started_app(studio_presets, tmp_path_factory):
    """python app.py with --auth, and how long it took to answer."""
    root = tmp_path_factory.mktemp("app")
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--presets-dir", str(studio_presets), "--preset", TINY,
         "--models-dir", str(root / "models"), "--outputs-dir", str(root / "outputs"), "--auth", "ada:secret"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    answered = None
    while time.perf_counter() - started < 60 and process.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            answered = time.perf_counter() - started
            break
        except OSError:
            time.sleep(0.05)
    yield url, answered, process
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def test_the_page_answers_within_the_goal(started_app):
    url, answered, process = started_app
    assert answered is not None, process.stdout.read() if process.poll() is not None else "no answer in 60 s"
    assert answered <= STARTUP_GOAL_S, f"the studio answered after {answered:.1f} s"


def test_auth_keeps_out_a_visitor_without_the_login(started_app):
    url, _, _ = started_app
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=("ada", "wrong"), verbose=False)
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(url + "config", timeout=5)


def test_auth_lets_in_a_visitor_with_the_login(started_app):
    url, _, _ = started_app
    client = Client(url, auth=("ada", "secret"), verbose=False)
    result = client.predict(TINY, "a red circle", " ", 64, 64, 2, 1.0, 3, 1, None, 0.6, api_name="/generate")
    assert "Done" in result[0]


def test_a_second_studio_on_the_same_port_says_so_in_one_line(started_app, studio_presets):
    url, _, _ = started_app
    port = url.rstrip("/").rsplit(":", 1)[1]
    finished = subprocess.run([sys.executable, "app.py", "--port", port, "--presets-dir", str(studio_presets)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines()[-1] == (
        f"error: cannot serve on 127.0.0.1:{port}: Cannot find empty port in range: {port}-{port}. "
        "Is the studio already running? Start it with another --port.")
