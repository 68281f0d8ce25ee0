"""Start-up failures a user can make: each ends the command with one line that says what to do."""

import subprocess

import pytest

from tests.conftest import OFFLINE_ENV, free_port, serve_command


@pytest.mark.parametrize("model", ["/nonexistent/musicgen-folder", "facebook/musicgen-does-not-exist"])
def test_unloadable_model_stops_startup_with_one_clear_line(model: str) -> None:
    command = serve_command("--model", model, "--port", str(free_port()))
    result = subprocess.run(command, capture_output=True, env=OFFLINE_ENV, timeout=120, text=True)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1, result.stderr
    assert "--model" in errors[0] and model in errors[0]
    if not model.startswith("/"):
        assert "HF_HOME" in errors[0]
    assert "Traceback" not in result.stderr


def test_bad_setting_is_one_line() -> None:
    result = subprocess.run(serve_command("--port", "70000"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("musicgen-api: invalid setting: port"), lines


def test_contradictory_windows_are_one_line() -> None:
    command = serve_command("--window", "10", "--extend-stride", "10", "--port", str(free_port()))
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "--extend-stride (10) must be shorter than --window (10)" in lines[0], lines
