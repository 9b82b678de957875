"""The chat page in headless Chromium: upload an image, ask, and watch the answer stream in."""

from __future__ import annotations

import base64
import shutil

import openai
import pytest
from playwright.sync_api import sync_playwright

from vlstack.infer.engine import Engine, EngineConfig
from vlstack.infer.server import ServerConfig, create_app, serve_in_background
from vlstack.synthetic.scenes import shape_scenes

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                                         "(apt-get install -y chromium chromium-driver)")

# Records every length the answer's text takes, to see that it grew in steps rather than at once.
WATCH_THE_ANSWER = """() => {
  window.answerLengths = [];
  new MutationObserver(() => {
    const answer = document.querySelector(".message.assistant .text");
    if (answer) window.answerLengths.push(answer.textContent.length);
  }).observe(document.getElementById("log"), { subtree: true, childList: true, characterData: true });
}"""


@pytest.fixture
def browser_page():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.fixture
def engine(nano_model, tokenizer):
    return Engine(nano_model, tokenizer, EngineConfig(fast_path_max_new_tokens=0))


def test_upload_an_image_ask_and_the_streamed_answer_appears(browser_page, engine, tmp_path):
    image_path = tmp_path / "scene.png"
    shape_scenes(1, seed=2, image_size=64)[0].image.save(image_path)
    question = "What shapes are in this picture?"
    with serve_in_background(create_app(engine, ServerConfig())) as base:
        page = browser_page
        page.goto(base)
        page.wait_for_selector("#model-name:not(:empty)")
        assert page.text_content("#model-name") == "vlstack"
        page.set_input_files("#image-input", str(image_path))
        page.wait_for_selector("#attachment:not([hidden])")
        page.click("#settings summary")
        for field, value in (("#temperature", "1"), ("#seed", "3"), ("#max-tokens", "16")):
            page.fill(field, value)
        page.evaluate(WATCH_THE_ANSWER)
        page.fill("#question", question)
        page.click("#send")
        page.wait_for_selector('.message.assistant[data-state="done"]', timeout=60_000)
        shown = page.text_content(".message.assistant .text")
        lengths = page.evaluate("window.answerLengths")

        data_uri = "data:image/png;base64," + base64.b64encode(image_path.read_bytes()).decode()
        content = [{"type": "image_url", "image_url": {"url": data_uri}}, {"type": "text", "text": question}]
        api = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        expected = api.chat.completions.create(model="vlstack", messages=[{"role": "user", "content": content}],
                                               temperature=1, seed=3, max_tokens=16).choices[0].message.content
    assert expected.strip() and shown == expected
    assert len({n for n in lengths if 0 < n < len(expected)}) >= 1  # seen part-way through
    assert page.get_attribute(".message.user img", "src").startswith("data:image/png;base64,")


def test_errors_from_the_server_are_shown_in_the_answer(browser_page, engine):
    with serve_in_background(create_app(engine, ServerConfig(api_key="s3cret"))) as base:
        page = browser_page
        page.goto(base)
        page.wait_for_selector("#status.error")
        assert "missing API key" in page.inner_text("#status")
        page.fill("#question", "hello?")
        page.press("#question", "Enter")
        page.wait_for_selector('.message.assistant[data-state="error"]', timeout=30_000)
        assert "missing API key" in page.inner_text(".message.assistant .text")
