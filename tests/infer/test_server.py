"""The OpenAI-compatible server, driven over loopback by the real `openai` client and raw HTTP: the API, and
the server under bad input, faults and load (every malformed or out-of-range request is a 4xx naming its
field, one bad request never fails its batch, memory is bounded in bytes, tokenising happens off the
Engine's thread, clients that leave or wait too long stop their decode, allowlisted fetches keep a real
deadline, a schema fuzzer finds no 5xx, and 64 concurrent clients see no error)."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import http.client
import http.server
import io
import json
import socket
import socketserver
import statistics
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from urllib.parse import urlsplit

import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from vlstack.checkpoint import save_model
from vlstack.cli import main
from vlstack.errors import InputError
from vlstack.infer.engine import Engine, EngineConfig, Request
from vlstack.infer.server import ApiError, BatchWorker, ServerConfig, check_remote_url, create_app, serve_in_background
from vlstack.infer.server.images import fetch_image
from vlstack.synthetic.scenes import shape_scenes

MODEL = "vlstack"


@pytest.fixture
def engine(nano_model, tokenizer):
    return Engine(nano_model, tokenizer, EngineConfig(fast_path_max_new_tokens=0))


@pytest.fixture
def start(engine):
    """start(**ServerConfig fields) -> the base URL of a server over the nano Engine, stopped after the test."""
    with contextlib.ExitStack() as stack:
        def start_server(**fields) -> str:
            config = ServerConfig(**{"default_max_tokens": 8, **fields})
            return stack.enter_context(serve_in_background(create_app(engine, config)))

        yield start_server


@pytest.fixture(scope="module")
def images():
    return [scene.image for scene in shape_scenes(3, seed=1, image_size=32)]


def data_uri(image, image_format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return f"data:image/{image_format.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def ask(url: str, question: str = "what is on the left of the picture?") -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def client(base: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=60)


def post(base: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def good_request_succeeds(base: str, images) -> None:
    reply = client(base).chat.completions.create(model=MODEL, messages=ask(data_uri(images[0])), max_tokens=3)
    assert reply.choices[0].finish_reason in ("stop", "length")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height: the server must refuse it before decoding it."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_openai_client_plain_and_streaming(start, images):
    base = start()
    api = client(base)
    assert [m.id for m in api.models.list()] == [MODEL]
    for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}):
        messages = ask(data_uri(images[0]))
        plain = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, **sampling)
        chunks = list(api.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, stream=True,
                                                  stream_options={"include_usage": True}, **sampling))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert plain.choices[0].message.content and streamed == plain.choices[0].message.content
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-2].choices[0].finish_reason == plain.choices[0].finish_reason == "length"
        assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
        assert plain.usage.completion_tokens == 12 and plain.usage.prompt_tokens > 18  # 18 visual tokens


def test_string_content_system_messages_and_stop_strings(start):
    api = client(start())
    messages = [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "describe a scene"}]
    full = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=1.0, seed=5)
    text = full.choices[0].message.content
    assert len(text) > 2
    cut = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=1.0, seed=5,
                                      stop=[text[1:3]])
    assert cut.choices[0].message.content == text[: text.index(text[1:3])]
    assert cut.choices[0].finish_reason == "stop"


BAD_REQUESTS = {
    "malformed JSON": (b'{"model": "vlstack", "messages": [', 400, "not valid JSON"),
    "not an object": (b"[1, 2]", 400, "must be a JSON object"),
    "no messages": (b'{"messages": []}', 400, "messages: List should have at least 1 item"),
    "bad part": (b'{"messages": [{"role": "user", "content": [{"type": "audio"}]}]}', 400,
                 "messages.0.content.0.type: Input should be 'text' or 'image_url'"),
    "temperature": (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 7}', 400,
                    "temperature: Input should be less than or equal to 2"),
    "unknown model": (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}', 404,
                      "'gpt-4o' is not served here"),
    "reserved token": (b'{"messages": [{"role": "user", "content": "hi <image> there"}]}', 400,
                       "reserved token(s) <image>"),
    "too long": (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}', 400,
                 "over the model's 256 positions"),
    "too long, streamed": (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000, "stream": true}',
                           400, "over the model's 256 positions"),
}


def _image_request(url: str) -> bytes:
    return json.dumps({"messages": ask(url)}).encode()


IMAGE_REQUESTS = {
    "text payload": ("data:text/plain;base64,aGVsbG8=", "of type 'text/plain', not an image"),
    "text as png": ("data:image/png;base64," + base64.b64encode(b"<html>not a picture</html>").decode(),
                    "is not a PNG, JPEG, WEBP, GIF, BMP image"),
    "bad base64": ("data:image/png;base64,@@@@", "is not valid base64"),
    "too many pixels": ("data:image/png;base64," + base64.b64encode(png_declaring(5000, 5000)).decode(),
                        "5000x5000 = 25,000,000 pixels, over this server's limit of 16,777,216 pixels"),
    "bomb": ("data:image/png;base64," + base64.b64encode(png_declaring(100_000, 100_000)).decode(),
             "over this server's limit of 16,777,216 pixels"),
    "remote url": ("http://169.254.169.254/latest/meta-data/", "remote image URLs are refused"),
    "file url": ("file:///etc/passwd", "must be a base64 data URI"),
}


@pytest.mark.parametrize("body, status, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_are_4xx_in_openais_shape_and_the_server_keeps_serving(start, images, body, status, message):
    base = start()
    got, reply = post(base, body)
    assert got == status and message in reply["error"]["message"]
    assert reply["error"]["type"] == "invalid_request_error"
    good_request_succeeds(base, images)


@pytest.mark.parametrize("url, message", IMAGE_REQUESTS.values(), ids=IMAGE_REQUESTS.keys())
def test_bad_images_are_400_and_the_server_keeps_serving(start, images, url, message):
    base = start()
    status, reply = post(base, _image_request(url))
    assert status == 400 and message in reply["error"]["message"]
    assert reply["error"]["param"] == "messages.0.content.0.image_url"
    good_request_succeeds(base, images)


def test_oversized_bodies_are_413_whether_declared_or_chunked(start, images):
    base = start(max_body_bytes=50_000)
    big = _image_request(data_uri(images[0].resize((400, 400)), "BMP"))  # ~640 kB of base64
    address = urlsplit(base)
    for body, chunked in ((big, False), (iter([big[:40_000], big[40_000:]]), True)):
        # a kept-alive connection, as SDKs and browsers use: the server discards the unread rest of the body
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"},
                           encode_chunked=chunked)
        response = connection.getresponse()
        message = json.loads(response.read())["error"]["message"]
        assert response.status == 413 and "over this server's limit of 50,000 bytes" in message
        connection.close()
    good_request_succeeds(base, images)


def test_api_key_is_required_when_configured(start, images):
    base = start(api_key="s3cret")
    for headers, message in (({}, "missing API key"), ({"Authorization": "Bearer wrong"}, "incorrect API key"),
                             ({"Authorization": "Basic czNjcmV0"}, "missing API key")):
        status, reply = post(base, _image_request(data_uri(images[0])), headers)
        assert status == 401 and message in reply["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        client(base, api_key="wrong").models.list()
    answer = client(base, api_key="s3cret").chat.completions.create(model=MODEL, messages=ask(data_uri(images[0])))
    assert answer.choices[0].message.content is not None
    with urllib.request.urlopen(f"{base}/health", timeout=10) as response:  # health stays open for probes
        assert json.loads(response.read())["status"] == "ok"


def test_remote_image_hosts_must_be_on_the_allowlist():
    allowed = ["images.example.com", "CDN.example.org"]
    check_remote_url("https://images.example.com/cat.png", allowed, "image")
    check_remote_url("http://cdn.example.org./a.jpg", allowed, "image")
    for url in ("http://169.254.169.254/latest/meta-data/", "http://localhost:8000/metrics",
                "https://images.example.com@evil.example.net/x.png", "https://images.example.com.evil.net/x.png",
                "https://example.com/x.png"):
        with pytest.raises(ApiError, match="refused unless their host is on the server's allowed_image_hosts"):
            check_remote_url(url, allowed, "image")


@pytest.fixture
def image_host(images):
    """A loopback HTTP server with an image, a redirect to it, and an image over the size limit."""
    png = base64.b64decode(data_uri(images[1]).partition(",")[2])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/shape.png")
                self.end_headers()
                return
            body = png if self.path == "/shape.png" else b"\0" * 200_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)
    server.server_close()


def test_allowlisted_hosts_are_fetched_without_redirects_and_within_the_size_limit(start, image_host):
    base = start(allowed_image_hosts=["127.0.0.1"], max_body_bytes=100_000)
    status, reply = post(base, _image_request(f"{image_host}/shape.png"))
    assert status == 200 and reply["usage"]["prompt_tokens"] > 18
    status, reply = post(base, _image_request(f"{image_host}/redirect"))
    assert status == 400 and "302" in reply["error"]["message"]
    status, reply = post(base, _image_request(f"{image_host}/large.png"))
    assert status == 413 and "over this server's limit of 100,000 bytes" in reply["error"]["message"]


def test_64_concurrent_clients_are_batched_without_errors(start, engine, images):
    batches, threads = [], set()
    generate = engine.generate

    def recording_generate(requests):
        batches.append(len(requests))
        threads.add(threading.current_thread().name)
        return generate(requests)

    engine.generate = recording_generate
    api = client(start(batch_wait_ms=20))
    expected = api.chat.completions.create(model=MODEL, messages=ask(data_uri(images[0])), max_tokens=4,
                                           temperature=0).choices[0].message.content

    def one_client(i: int) -> str:
        kwargs = {"model": MODEL, "messages": ask(data_uri(images[i % 3] if i % 2 else images[0])),
                  "max_tokens": 4, "temperature": 0}
        if i % 8 == 7:
            return "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(stream=True, **kwargs)
                           if c.choices)
        return api.chat.completions.create(**kwargs).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(one_client, i) for i in range(64)]
        _, not_done = concurrent.futures.wait(futures, timeout=180)
    assert not not_done
    answers = [f.result() for f in futures]  # raises on any client error
    assert all(a == expected for i, a in enumerate(answers) if i % 2 == 0)  # batched greedy == alone
    assert max(batches) > 1 and max(batches) <= engine.config.max_batch_size
    assert threads == {"vlstack-engine"}  # only the worker touches the Engine


def test_one_bad_request_fails_alone_in_its_batch(engine, images):
    worker = BatchWorker(engine, wait_s=0.05, max_queued=8)
    good = Request.ask("what is it?", images[0], max_new_tokens=3)
    futures = [worker.submit(good), worker.submit(Request.ask("q", images[0], max_new_tokens=5000)),
               worker.submit(good)]
    worker.start()  # all three are queued, so they form one batch
    try:
        assert futures[0].result(60).token_ids == futures[2].result(60).token_ids
        with pytest.raises(InputError, match="over the model's"):
            futures[1].result(60)
    finally:
        worker.stop()


def test_a_full_queue_is_503(engine, images):
    worker = BatchWorker(engine, wait_s=0, max_queued=1)  # not started: nothing leaves the queue
    worker.submit(Request.ask("q", images[0]))
    with pytest.raises(ApiError, match="the server is busy") as refused:
        worker.submit(Request.ask("q", images[0]))
    assert refused.value.status == 503


def test_metrics_parse_as_prometheus_text_and_count_requests(start, images):
    base = start()
    api = client(base)
    for _ in range(2):  # the same image twice: the second is a prefix-cache hit (so no image-feature lookup)
        api.chat.completions.create(model=MODEL, messages=ask(data_uri(images[0])), max_tokens=3, temperature=0)
    post(base, b"{not json")
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    requests = {(s.labels["path"], s.labels["status"]): s.value for s in families["vlstack_requests"].samples
                if s.name == "vlstack_requests_total"}
    assert requests == {("/v1/chat/completions", "200"): 2, ("/v1/chat/completions", "400"): 1}
    latency = {s.name: s.value for s in families["vlstack_request_duration_seconds"].samples
               if s.labels["path"] == "/v1/chat/completions"}
    assert latency["vlstack_request_duration_seconds_count"] == 3
    assert families["vlstack_prefix_cache_hit_rate"].samples[0].value == 0.5
    assert families["vlstack_image_cache_misses"].samples[0].value == 1
    assert families["vlstack_generated_tokens"].samples[0].value == 6
    assert families["vlstack_generated_tokens_per_second"].samples[0].value > 0


def test_the_chat_page_and_its_assets_are_served(start):
    base = start()
    with urllib.request.urlopen(base, timeout=10) as response:
        page = response.read().decode()
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert 'id="question"' in page and "/static/app.js" in page
    for asset in ("app.js", "style.css"):
        with urllib.request.urlopen(f"{base}/static/{asset}", timeout=10) as response:
            assert response.status == 200


def test_cli_serve_loads_the_checkpoint_and_takes_the_key_from_the_environment(nano_model, tokenizer, tmp_path,
                                                                               monkeypatch, images):
    save_model(nano_model, tmp_path / "ckpt", tokenizer=tokenizer)
    launched = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: launched.update(app=app, **kwargs))
    monkeypatch.setenv("VLSTACK_API_KEY", "from-env")
    assert main(["serve", "--model", str(tmp_path / "ckpt"), "--port", "8123",
                 "--set", "model_name=nano", "--set", "allowed_image_hosts=[a.example]"]) == 0
    assert (launched["host"], launched["port"]) == ("127.0.0.1", 8123)
    with serve_in_background(launched["app"]) as base:
        with pytest.raises(openai.AuthenticationError):
            client(base).models.list()
        assert [m.id for m in client(base, api_key="from-env").models.list()] == ["nano"]


def test_a_client_that_leaves_mid_stream_stops_its_decode(start, engine, images):
    pieces = []
    stream = engine.stream

    def counting_stream(request):
        for piece in stream(request):
            pieces.append(piece)
            yield piece

    engine.stream = counting_stream
    base = start()
    body = json.dumps({"messages": ask(data_uri(images[0])), "max_tokens": 150, "temperature": 0, "stream": True})
    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    connection.close()
    good_request_succeeds(base, images)  # the worker is free again
    assert len(pieces) < 150


# --- bad input, faults and load ------------------------------------------------------------


def chat(**fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


OUT_OF_RANGE = {
    "seed 2**64": (chat(seed=2**64), "seed"),
    "negative seed": (chat(seed=-1), "seed"),
    "tiny temperature": (chat(temperature=1e-300), "temperature"),
    "lone surrogate": (b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}', "messages.0.content.0.text"),
    "surrogate stop": (b'{"messages": [{"role": "user", "content": "hi"}], "stop": "\\udfff"}', "stop"),
    "empty stop": (chat(stop=[""]), "stop"),
    "five stops": (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    "long stop": (chat(stop="x" * 300), "stop"),
    "huge top_k": (chat(top_k=2**40), "top_k"),
    "too many characters": (json.dumps({"messages": [{"role": "user", "content": "w " * 40_000}]}).encode(),
                            "messages"),
}


@pytest.mark.parametrize("body, param", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_out_of_range_fields_are_400_naming_the_field(start, images, body, param):
    base = start()
    status, reply = post(base, body)
    assert status == 400, reply
    assert reply["error"]["param"] == param or param in reply["error"]["message"]
    good_request_succeeds(base, images)


def test_json_nested_a_hundred_thousand_levels_is_400(start, images):
    base = start()
    status, reply = post(base, b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert status == 400 and "nests JSON too deeply" in reply["error"]["message"]
    good_request_succeeds(base, images)


def test_an_engine_failure_fails_only_its_own_request_in_a_batch(engine, images):
    generate = engine.generate

    def failing_on_the_marked_request(requests):
        if any(r.params.max_new_tokens == 7 for r in requests):
            raise RuntimeError("this request breaks the Engine")
        return generate(requests)

    engine.generate = failing_on_the_marked_request
    worker = BatchWorker(engine, wait_s=0.05, max_queued=8)
    good = [Request.ask("what is it?", images[i % 3], max_new_tokens=3) for i in range(5)]
    futures = [worker.submit(r) for r in good[:3]] + [worker.submit(Request.ask("q", images[0], max_new_tokens=7))]
    futures += [worker.submit(r) for r in good[3:]]
    worker.start()  # all six are queued, so they form one batch
    try:
        assert all(f.result(60).finish_reason in ("stop", "length") for i, f in enumerate(futures) if i != 3)
        with pytest.raises(RuntimeError, match="breaks the Engine"):
            futures[3].result(60)
    finally:
        worker.stop()


def test_memory_is_bounded_in_bytes_with_503_and_retry_after(start, images):
    big = images[0].resize((1024, 1024))  # 3 MB decoded
    base = start(max_inflight_bytes=2 * 2**20, max_image_pixels=2048 * 2048, retry_after_s=2)
    request = json.dumps({"messages": ask(data_uri(big)), "max_tokens": 2}).encode()
    status, reply = post(base, request)
    assert status == 503 and "needs 3,145,728 bytes" in reply["error"]["message"]
    good_request_succeeds(base, images)  # the budget came back: a small request fits


def test_retry_after_is_sent_with_a_503(start, images):
    import urllib.error
    import urllib.request

    base = start(max_inflight_bytes=1000, retry_after_s=3)
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps({"messages": ask(data_uri(
        images[0]))}).encode(), method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "3"


def test_tokenising_and_decoding_images_happen_off_the_engine_thread(start, engine, images):
    threads = set()
    prompt_ids = engine.prompt_ids

    def recording(request, tokenizer=None):
        threads.add(threading.current_thread().name)
        return prompt_ids(request, tokenizer)

    engine.prompt_ids = recording
    good_request_succeeds(start(), images)
    assert threads and "vlstack-engine" not in threads


def test_a_request_over_its_timeout_is_504_and_stops_decoding(start, engine, images):
    cancelled = []
    generate = engine.generate

    def slow_generate(requests):
        time.sleep(0.5)  # longer than the timeout: the request has been answered 504 by now
        cancelled.extend(r.cancel.is_set() for r in requests)
        return generate(requests)

    engine.generate = slow_generate
    base = start(request_timeout_s=0.1)
    status, reply = post(base, json.dumps({"messages": ask(data_uri(images[0])), "max_tokens": 3}).encode())
    assert status == 504 and "not answered within 0.1 s" in reply["error"]["message"]
    engine.generate = generate
    deadline = time.monotonic() + 30
    while not cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled == [True]  # the Engine saw the cancellation: it ends the row at its next step


def test_a_client_that_disconnects_cancels_its_non_streaming_request(start, engine, images):
    seen = []
    generate = engine.generate

    def waiting_generate(requests):
        seen.extend(requests)
        deadline = time.monotonic() + 30
        while not requests[0].cancel.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        return generate(requests)

    engine.generate = waiting_generate
    base = start()
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"messages": ask(data_uri(images[0])), "max_tokens": 50}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
    deadline = time.monotonic() + 30
    while not seen[0].cancel.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen[0].cancel.is_set()
    engine.generate = generate
    good_request_succeeds(base, images)


class _Misbehaving(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _bad_host(reply) -> tuple[str, callable]:
    """A loopback host that answers every connection with `reply(socket)`."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(65536)
            with contextlib.suppress(OSError):
                reply(self.request)

    server = _Misbehaving(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/image.png", server.shutdown


def _trickle(sock):
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(60):
        sock.sendall(b"x")
        time.sleep(0.5)


BAD_HOSTS = {
    "over-long header line": (lambda s: s.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"),
                              "LineTooLong"),
    "bad status line": (lambda s: s.sendall(b"NOT HTTP AT ALL\r\n\r\n"), "BadStatusLine"),
    "too many headers": (lambda s: s.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 150 + b"\r\n"), "headers"),
    "closes at once": (lambda s: s.close(), "RemoteDisconnected"),
    "trickles a byte at a time": (_trickle, "not complete after 1 s"),
    "trickles its headers": (lambda s: [s.sendall(b"H") or time.sleep(0.5) for _ in range(60)],
                             "not complete after 1 s"),
}


@pytest.mark.parametrize("reply, message", BAD_HOSTS.values(), ids=BAD_HOSTS.keys())
def test_allowlisted_fetches_keep_a_deadline_and_every_http_error_is_400(reply, message):
    url, stop = _bad_host(reply)
    try:
        with pytest.raises(ApiError) as refused:
            fetch_image(url, 100_000, timeout_s=1.0, where="messages.0.content.0.image_url")
    finally:
        stop()
    assert refused.value.status == 400 and message in refused.value.message


@pytest.mark.slow
def test_a_schema_fuzzer_finds_no_server_error(start, images):
    """Schemathesis generates requests from the server's own OpenAPI schema (and deliberately bad ones);
    none may get a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation import GenerationMode

    base = start()
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    statuses = []

    operations = [operation.ok() for operation in schema.get_all_operations()]
    # valid requests to every operation, then bodies that break the schema (a GET has nothing to break)
    runs = [(o, GenerationMode.POSITIVE) for o in operations] + [
        (o, GenerationMode.NEGATIVE) for o in operations if o.method.upper() == "POST"]
    for operation, mode in runs:
        strategy = operation.as_strategy(mode)

        @settings(max_examples=60, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case):
            response = case.call(base_url=base, timeout=60)
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.body, response.text[:500])

        check()
    assert len(statuses) >= 120 and any(400 <= s < 500 for s in statuses) and 200 in statuses
    print(f"\nfuzzing: {len(statuses)} requests, statuses {sorted(set(statuses))}")
    good_request_succeeds(base, images)


@pytest.mark.slow
def test_64_concurrent_clients_see_no_error_and_the_latencies_are_recorded(start, images, capsys):
    api = client(start(batch_wait_ms=10))

    def one_client(i: int) -> list[float]:
        seconds = []
        for _ in range(3):
            started = time.perf_counter()
            reply = api.chat.completions.create(model="vlstack", messages=ask(data_uri(images[i % 3])), max_tokens=4)
            assert reply.choices[0].finish_reason in ("stop", "length")
            seconds.append(time.perf_counter() - started)
        return seconds

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        latencies = sorted(s for result in pool.map(one_client, range(64)) for s in result)  # raises on an error
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]
    assert len(latencies) == 192
    with capsys.disabled():
        print(f"\nload: 64 clients x 3 requests, 0 errors, p50 {p50:.3f} s, p99 {p99:.3f} s")
