"""Settings from MUSICGEN_* environment variables and flags, on a real server and the real client: flags win over
variables, variables over defaults, and a misspelt variable is named in a start-up warning."""

import os
import pathlib

import requests

from tests.conftest import Server, ServerFactory, free_port
from tests.test_client_cli import run_cli

KEY = "env-key"


def test_environment_and_flags(server_factory: ServerFactory, mono_model: pathlib.Path, tmp_path: pathlib.Path) -> None:
    env = {
        "MUSICGEN_API_KEY": KEY,
        "MUSICGEN_MAX_DURATION": "5",  # no flag: the variable applies
        "MUSICGEN_MAX_DESCRIPTION_CHARS": "50",  # the flag below wins
        "MUSICGEN_SEND_TIMEOUT": "7",  # the flag's name in capitals, like every other
        "MUSICGEN_MAX_DURATON": "9",  # misspelt
    }
    server: Server = server_factory(mono_model, "--no-mbd", "--max-description-chars", "40", env=env)
    auth = {"Authorization": f"Bearer {KEY}"}
    info = requests.get(f"{server.url}/api/info", headers=auth, timeout=5).json()
    assert (info["max_duration"], info["max_description_chars"]) == (5, 40)
    warnings = [line for line in server.log().splitlines() if "MUSICGEN_" in line and "ignoring" in line]
    assert len(warnings) == 1 and "MUSICGEN_MAX_DURATON" in warnings[0], warnings

    for path in ("/api/info", "/docs", "/redoc", "/openapi.json"):  # the key came from the environment
        assert requests.get(f"{server.url}{path}", timeout=5).status_code == 401, path
        assert requests.get(f"{server.url}{path}", headers=auth, timeout=5).status_code == 200, path

    client_env = {**os.environ, "MUSICGEN_URL": server.url, "MUSICGEN_API_KEY": KEY}
    made = run_cli("generate", "x", "--duration", "1", "-o", "x.wav", cwd=tmp_path, env=client_env)
    assert made.returncode == 0 and (tmp_path / "x.wav").is_file(), made.stderr.decode()
    healthy = run_cli("health", cwd=tmp_path, env=client_env)
    assert healthy.stdout.decode().startswith("healthy — "), healthy.stdout.decode()  # /api/info let it in
    refused = run_cli("generate", "x", "--api-key", "not-it", "-o", "y.wav", cwd=tmp_path, env=client_env)
    assert refused.returncode == 2 and "API key" in refused.stderr.decode()  # the flag wins
    elsewhere = {**client_env, "MUSICGEN_URL": f"http://127.0.0.1:{free_port()}"}
    assert run_cli("health", "--url", server.url, cwd=tmp_path, env=elsewhere).returncode == 0  # the flag wins
    assert run_cli("health", cwd=tmp_path, env=elsewhere).returncode == 4  # the variable applies
