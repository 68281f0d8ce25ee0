"""The web page in a real headless Chromium (Debian's, driven by Playwright) against a real server on the tiny model:
generate with live progress, a playable clip of the right length, download name, history, Cancel, the 400 and 503
messages, the server's limits, seeds, formats, continuing an audio file, a phone-sized screen. Screenshots of the
finished state go to artifacts/."""

import http.client
import io
import json
import math
import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import soundfile
from playwright.sync_api import Browser, Page, Route, sync_playwright

from tests.conftest import Server, ServerFactory
from tests.test_api import wait_healthy
from tests.test_client_cli import generation_running

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PROMPT = "lofi hip hop with warm piano"

# Records every value the progress bar shows, in order.
WATCH_PROGRESS = """() => {
  window.progressSeen = [];
  const bar = document.querySelector('#progress');
  new MutationObserver(() => window.progressSeen.push(Number(bar.getAttribute('aria-valuenow'))))
    .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium: apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser: Browser, url: str, errors: list[str]) -> Page:
    """A fresh browser profile (empty history) on the page, once it has read the server's limits and health."""
    page = browser.new_context(viewport={"width": 900, "height": 1000}).new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("document.querySelector('#server-status').dataset.state === 'healthy'")
    return page


@pytest.fixture
def page(browser: Browser, mono_server: Server) -> Iterator[Page]:
    errors: list[str] = []
    page = open_page(browser, mono_server.url, errors)
    yield page
    page.context.close()
    assert errors == [], "the page threw"


def generate(page: Page, prompt: str, seconds: int) -> None:
    page.fill("#description", prompt)
    page.fill("#duration", str(seconds))
    page.evaluate(WATCH_PROGRESS)
    page.click("#generate")


def generate_and_read_request(page: Page, prompt: str, seconds: int) -> str:
    """Generate as `generate` does; the request body as sent, once the clip is shown and kept."""
    kept = page.locator("#history li").count()
    with page.expect_request("**/api/music") as request:
        generate(page, prompt, seconds)
    page.wait_for_function(f"document.querySelectorAll('#history li').length === {kept + 1}", timeout=60_000)
    page.wait_for_function("document.querySelector('#player').readyState >= 1")
    return str(request.value.post_data)


def downloaded(page: Page) -> tuple[str, bytes]:
    """The download link's MIME type and bytes."""
    mime, data = page.evaluate(
        "async url => { const blob = await (await fetch(url)).blob();"
        " return [blob.type, [...new Uint8Array(await blob.arrayBuffer())]]; }",
        page.locator("#download").get_attribute("href"),
    )
    return mime, bytes(data)


def waveform_painted(page: Page) -> int:
    return int(
        page.evaluate(
            "() => { const c = document.querySelector('#waveform');"
            " return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((v, i) => i % 4 == 3 && v)"
            ".length; }"
        )
    )


def test_generate_shows_progress_and_a_playable_clip(page: Page, mono_server: Server) -> None:
    generate(page, PROMPT, 3)
    page.wait_for_function("document.querySelector('#player').readyState >= 1", timeout=60_000)

    seen = page.evaluate("window.progressSeen")
    assert seen == sorted(seen) and seen[-1] == 100
    assert any(0 < percent < 100 for percent in seen), seen
    player = page.locator("#player")
    assert player.evaluate("a => a.error") is None
    assert player.evaluate("a => a.duration") == pytest.approx(3, abs=0.01)
    player.evaluate("a => a.play()")
    page.wait_for_function("document.querySelector('#player').currentTime > 0.1", timeout=10_000)
    player.evaluate("a => a.pause()")

    download = page.locator("#download")
    assert download.get_attribute("download") == "lofi-hip-hop-with-warm-piano.wav"
    wav = bytes(page.evaluate("async url => [...new Uint8Array(await (await fetch(url)).arrayBuffer())]",
                              download.get_attribute("href")))  # fmt: skip
    with wave.open(io.BytesIO(wav), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (32000, 1, 3 * 32000)
    assert page.locator("#result-meta").inner_text().startswith("3.0 s · mono · 32 kHz · made in ")
    assert waveform_painted(page) > 1000, "the waveform was not drawn"
    assert page.locator("#history li").count() == 1
    assert page.locator("#key-dialog").is_hidden() and page.locator("#forget-key").is_hidden(), "no key, no prompt"

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-finished.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways on a phone"
    page.screenshot(path=str(ARTIFACTS / "web-phone.png"), full_page=True)

    page.reload()  # the history is kept in the browser
    page.locator("#history li .clip-open").click()
    page.wait_for_function("document.querySelector('#player').duration === 3")
    assert page.locator("#result-title").inner_text() == PROMPT


# Notes, each time the page sets its playing state, whether the finished clip had arrived by then.
WATCH_PLAYING = """() => {
  window.playingSeen = [];
  const bar = document.querySelector('#progress');
  new MutationObserver(() => window.playingSeen.push(
    {playing: bar.dataset.playing, finished: !document.querySelector('#result').hidden}))
    .observe(bar, {attributes: true, attributeFilter: ['data-playing']});
}"""


def test_the_piece_plays_while_it_is_made(page: Page, mono_server: Server) -> None:
    """Playback starts from the stream's first chunks, before `completed`; then the player holds the final clip."""
    page.fill("#description", "play me as you go")
    page.fill("#duration", "30")
    page.evaluate(WATCH_PLAYING)
    with page.expect_request("**/api/music") as request:
        page.click("#generate")
    assert json.loads(str(request.value.post_data))["stream_audio"] is True
    page.wait_for_function("document.querySelector('#progress').dataset.playing === 'true'", timeout=60_000)
    assert page.locator("#result").is_hidden(), "playing only once the clip had arrived"
    page.wait_for_function("parseFloat(document.querySelector('#progress .played').style.width) > 0", timeout=10_000)
    page.wait_for_function("document.querySelector('#player').readyState >= 1", timeout=120_000)
    assert page.locator("#player").evaluate("a => a.duration") == pytest.approx(30, abs=0.01)
    first_playing = next(state for state in page.evaluate("window.playingSeen") if state["playing"] == "true")
    assert first_playing["finished"] is False
    # The live stream goes on after the clip arrived (no cut); pressing play hands over to the finished clip.
    assert page.locator("#live-note").is_visible()
    page.locator("#player").evaluate("a => a.play()")
    page.wait_for_function("document.querySelector('#live-note').hidden")
    page.locator("#player").evaluate("a => a.pause()")


def test_cancel_stops_the_live_stream_too(page: Page, mono_server: Server) -> None:
    page.fill("#description", "cancel me while playing")
    page.fill("#duration", "30")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#progress').dataset.playing === 'true'", timeout=60_000)
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#progress').dataset.playing === 'false'")
    wait_healthy(mono_server.url, within=5)
    assert page.locator("#result").is_hidden()


def test_seed_and_format(page: Page, mono_server: Server) -> None:
    seed = "9007199254740993"  # 2**53 + 1: no JavaScript number holds it, the page must keep its digits
    page.click("summary")
    page.fill("input[name=seed]", seed)
    page.select_option("select[name=format]", "flac")
    sent = json.loads(generate_and_read_request(page, "seeded flac", 1))
    assert (sent["seed"], sent["format"], sent["normalization"]) == (int(seed), "flac", "loudness")
    assert page.locator("#seed-value").inner_text() == seed
    assert f"(seed {seed})" in mono_server.log()

    download = page.locator("#download")
    assert download.get_attribute("download") == "seeded-flac.flac" and download.inner_text() == "Download FLAC"
    mime, flac = downloaded(page)
    assert mime == "audio/flac" and flac[:4] == b"fLaC"
    with soundfile.SoundFile(io.BytesIO(flac)) as f:
        assert (f.format, f.samplerate, f.channels, f.frames) == ("FLAC", 32000, 1, 32000)
    assert page.locator("#player").evaluate("a => a.duration") == pytest.approx(1, abs=0.01)
    assert page.locator("#result-meta").inner_text().startswith("1.0 s · mono · 32 kHz · made in ")
    assert waveform_painted(page) > 1000, "the FLAC's waveform was not drawn"

    # No seed: the server picks one (almost surely beyond 2**53), and the page shows it digit for digit.
    page.fill("input[name=seed]", "")
    page.select_option("select[name=format]", "wav")
    sent = json.loads(generate_and_read_request(page, "seeded flac", 1))
    assert "seed" not in sent
    random_seed = page.locator("#seed-value").inner_text()
    assert random_seed.isdigit() and random_seed != seed and f"(seed {random_seed})" in mono_server.log()
    assert download.get_attribute("download") == "seeded-flac.wav"

    page.locator("summary").click()  # folded away again: Reuse seed unfolds it
    page.click("#reuse-seed")
    assert page.locator("input[name=seed]").is_visible()
    assert page.locator("input[name=seed]").input_value() == random_seed
    _, first = downloaded(page)
    sent = json.loads(generate_and_read_request(page, "seeded flac", 1))
    assert str(sent["seed"]) == random_seed and page.locator("#seed-value").inner_text() == random_seed
    assert downloaded(page)[1] == first, "the same seed made a different clip"


def tone_wav(seconds: float) -> bytes:
    frames = int(32000 * seconds)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(32000)
        w.writeframes(struct.pack(f"<{frames}h", *(round(8000 * math.sin(i / 10)) for i in range(frames))))
    return out.getvalue()


def test_continue_from_audio(page: Page) -> None:
    page.click("summary")
    include = page.locator("input[name=return_prompt]")
    assert include.is_disabled()
    page.set_input_files("#audio-prompt", files=[{"name": "tune.wav", "mimeType": "audio/wav",
                                                  "buffer": tone_wav(0.5)}])  # fmt: skip
    assert include.is_enabled() and include.is_checked()
    include.uncheck()
    sent = json.loads(generate_and_read_request(page, "go on", 1))
    assert sent["audio_prompt"] and sent["return_prompt"] is False
    assert page.locator("#player").evaluate("a => a.duration") == pytest.approx(1, abs=0.01)  # only the new audio

    page.click("#clear-audio-prompt")
    assert include.is_disabled() and page.locator("#clear-audio-prompt").is_hidden()
    page.locator("#history li .icon").first.click()  # reuse the clip's settings: no audio file among them
    assert page.locator("#audio-prompt").evaluate("box => box.files.length") == 0


def test_cancel_stops_the_generation_on_the_server(page: Page, mono_server: Server) -> None:
    mark = mono_server.mark()
    generate(page, "a long piece to cancel", 30)
    page.wait_for_function("Number(document.querySelector('#progress').getAttribute('aria-valuenow')) >= 3")
    page.click("#cancel")
    page.wait_for_selector("#message:has-text('Cancelled')")
    wait_healthy(mono_server.url, within=3)
    assert "completed in" not in mono_server.wait_for_log(mark, "generation cancelled after")
    assert page.locator("#generate").is_enabled() and page.locator("#cancel").is_hidden()
    assert page.locator("#result").is_hidden() and page.locator("#history li").count() == 0


def test_bad_input_shows_the_server_message(page: Page, mono_server: Server) -> None:
    page.fill("#description", "   ")
    page.click("#generate")
    assert "describe the music first" in page.locator("#message").inner_text()

    page.fill("#description", "x")
    page.click("summary")
    page.fill("input[name=temperature]", "0")
    page.click("#generate")
    message = page.locator("#message")
    message.filter(has_text="temperature must be").wait_for()
    assert message.get_attribute("data-kind") == "error"
    assert "Not accepted: temperature must be a finite number greater than 0" in message.inner_text()
    assert page.locator("input[name=temperature]").get_attribute("aria-invalid") == "true"

    page.fill("input[name=temperature]", "1")
    page.fill("input[name=seed]", "-3")  # the server's rule, and its message, apply to the seed too
    page.click("#generate")
    message.filter(has_text="seed must be").wait_for()
    assert "seed must be an integer from 0 to 2**63 - 1; got -3" in message.inner_text()
    assert page.locator("input[name=seed]").get_attribute("aria-invalid") == "true"
    assert requests.get(f"{mono_server.url}/api/healthcheck", timeout=5).status_code == 200


def test_busy_server_is_explained(page: Page, mono_server: Server) -> None:
    with generation_running(mono_server.url):
        page.fill("#description", "x")
        page.click("#generate")
        page.locator("#message").filter(has_text="busy").wait_for()
        assert "Try again in 5 s" in page.locator("#message").inner_text()
        assert page.locator("#generate").is_enabled()


def test_page_shows_the_servers_limits(page: Page, browser: Browser, mono_server: Server) -> None:
    limits = requests.get(f"{mono_server.url}/api/info", timeout=5).json()
    assert {"max_duration", "max_description_chars", "mbd_available"} <= set(limits)
    assert page.locator("#duration").get_attribute("max") == str(limits["max_duration"])
    assert page.locator("#description").get_attribute("maxlength") == str(limits["max_description_chars"])
    assert page.locator("input[name=mbd]").is_enabled() == limits["mbd_available"]

    def other_limits(route: Route) -> None:
        route.fulfill(json={"max_duration": 8, "max_description_chars": 50, "mbd_available": False})

    context = browser.new_context()
    context.route("**/api/info", other_limits)
    page = context.new_page()
    page.goto(mono_server.url)
    page.wait_for_function("document.querySelector('#duration').max === '8'")
    assert page.locator("#duration").input_value() == "8"
    assert page.locator("#description").get_attribute("maxlength") == "50"
    assert page.locator("#char-count").inner_text() == "0 / 50"
    assert page.locator("input[name=mbd]").is_disabled()
    context.close()


def test_api_key_is_asked_for_kept_in_the_tab_and_sent(
    browser: Browser, server_factory: ServerFactory, mono_model: Path
) -> None:
    server = server_factory(mono_model, "--api-key", "s3cret", "--max-duration", "3", "--no-mbd")
    errors: list[str] = []
    page = browser.new_context(viewport={"width": 900, "height": 1000}).new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    dialog = page.get_by_role("dialog", name="This server needs an API key")
    key_error = page.locator("#key-error")
    forget = page.get_by_role("button", name="Forget API key")
    stored = "() => [sessionStorage.getItem('musicgen-api-key'), localStorage.length]"

    page.goto(server.url)  # the page is public; /api/info is not, so the page asks at once
    dialog.wait_for()
    assert key_error.is_hidden() and forget.is_hidden()
    page.wait_for_function("document.querySelector('#server-status').dataset.state === 'healthy'")

    page.get_by_label("API key", exact=True).fill("wrong")
    page.get_by_role("button", name="Use this key").click()
    key_error.filter(has_text="That key was refused: this server needs an API key").wait_for()
    assert dialog.is_visible() and page.evaluate(stored) == [None, 0]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-api-key.png"))

    page.get_by_label("API key", exact=True).fill("s3cret")
    page.get_by_role("button", name="Use this key").click()
    page.wait_for_function("document.querySelector('#duration').max === '3'")  # /api/info, asked again with the key
    assert dialog.is_hidden() and forget.is_visible()
    assert page.locator("input[name=mbd]").is_disabled()
    assert page.evaluate(stored) == ["s3cret", 0], "the key belongs in sessionStorage only"

    with page.expect_request("**/api/music") as request:
        generate(page, "a keyed clip", 1)
    page.wait_for_function("document.querySelector('#player').src !== ''", timeout=30_000)
    assert request.value.headers["authorization"] == "Bearer s3cret"
    assert page.locator("#history li").count() == 1

    page.reload()  # the same tab keeps its key
    page.wait_for_function("document.querySelector('#duration').max === '3'")
    assert dialog.is_hidden() and forget.is_visible()

    forget.click()  # then the next call asks again, and is retried with the key given
    assert forget.is_hidden() and page.evaluate(stored) == [None, 0]
    kept = page.locator("#history li").count()
    generate(page, "asked for again", 1)
    dialog.wait_for()
    page.get_by_label("API key", exact=True).fill("s3cret")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelectorAll('#history li').length === {kept + 1}", timeout=30_000)
    assert page.locator("#result-title").inner_text() == "asked for again"
    assert page.locator("#message").is_hidden()
    page.context.close()
    assert errors == [], "the page threw"


def test_page_and_assets_are_served(mono_server: Server) -> None:
    page = requests.get(mono_server.url, timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("style.css", "app.js", "api.js", "wav.js", "waveform.js", "history.js"):
        r = requests.get(f"{mono_server.url}/static/{asset}", timeout=5)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache", asset
    assert requests.get(f"{mono_server.url}/static/__init__.py", timeout=5).status_code == 404


TRAVERSALS = [
    "/static/../__init__.py",
    "/static/..%2f__init__.py",
    "/static/%2e%2e/__init__.py",
    "/static/%2e%2e%2f__init__.py",
    "/static/%252e%252e%252f__init__.py",
    "/static/..%5c__init__.py",
    "/static/....//__init__.py",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/../../../../../../etc/passwd",
    "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_static_files_never_leave_their_folder(mono_server: Server, path: str) -> None:
    """Sent byte for byte (no client-side normalization): the package's own files and the system's stay unread."""
    host, port = mono_server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("GET", path)
    answer = connection.getresponse()
    body = answer.read()
    connection.close()
    assert answer.status in (400, 404), (answer.status, body[:200])
    assert b"install_web_page" not in body and b"root:" not in body
