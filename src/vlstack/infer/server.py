"""An OpenAI-compatible HTTP server over the Engine, with a chat page at `/`.

`/v1/chat/completions` takes OpenAI's request shape (text and `image_url` parts with
base64 data URIs, `stream: true` as server-sent events) so existing clients work
unchanged. One worker thread owns the Engine, which is not safe for concurrent
decodes: it gathers requests that arrive within a few milliseconds into one batch,
which is where the Engine's throughput comes from. Every bad request gets a 4xx in
OpenAI's error shape and the server keeps serving; images are size-checked before
they are decoded, and remote image URLs are refused unless their host is allowlisted
(no server-side request forgery).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import io
import ipaddress
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
import urllib.request
import uuid
from contextlib import asynccontextmanager, closing, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Literal, Sequence
from urllib.parse import urlsplit

from PIL import Image

from vlstack.errors import ConfigError, InputError
from vlstack.infer.engine import Engine, EngineConfig, Request, Result, SamplingParams
from vlstack.models.tokenizer import IMAGE

try:
    from fastapi import Depends, FastAPI
    from fastapi import Request as HttpRequest
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
    from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import Headers
    from starlette.exceptions import HTTPException
except ImportError as exc:  # the `serve` extra
    raise ConfigError(f"the server needs the serve extra ({exc.name} is missing): "
                      "pip install 'vlstack[serve]'") from exc

log = logging.getLogger(__name__)

API_KEY_ENV = "VLSTACK_API_KEY"
STATIC_DIR = Path(__file__).with_name("static")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MAX_URL_CHARS = 8192


@dataclass
class ServerConfig:
    model: str = ""
    """Checkpoint directory that `serve` loads (config.yaml, model.safetensors, tokenizer/)."""
    model_name: str = "vlstack"
    """The model id `/v1/models` lists and requests may name."""
    host: str = "127.0.0.1"
    """Address to bind; the loopback default keeps the server private to this machine."""
    port: int = 8000
    api_key: str | None = None
    """Clients must send `Authorization: Bearer <key>` to /v1/*; `serve` falls back to $VLSTACK_API_KEY."""
    max_body_bytes: int = 16 * 2**20
    """Larger request bodies (and fetched images) are refused with 413 before they are parsed."""
    max_image_pixels: int = 4096 * 4096
    """Width x height above which an image is refused before decoding (decompression bombs)."""
    max_images_per_request: int = 8
    default_max_tokens: int = 256
    """Token budget when a request sets neither max_tokens nor max_completion_tokens."""
    allowed_image_hosts: list[str] = field(default_factory=list)
    """Hosts whose http(s) image URLs the server may fetch; empty refuses every remote URL."""
    image_fetch_timeout_s: float = 10.0
    """Total time allowed to fetch one allowlisted remote image."""
    batch_wait_ms: float = 5.0
    """How long the worker waits for more requests to join a batch (up to the Engine's max_batch_size)."""
    max_queued_requests: int = 256
    """Requests waiting for the Engine beyond this get 503, so a burst cannot exhaust memory."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Used by `serve` to load the checkpoint; `create_app` takes a ready Engine."""


# --- errors in OpenAI's shape --------------------------------------------------------------


class ApiError(Exception):
    """A request the server refuses; rendered as OpenAI's `{"error": {...}}` with its status."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.status, self.code, self.param), self.status, headers)


def error_body(message: str, status: int, code: str | None = None, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --- the request schema ------------------------------------------------------------------


class ImageUrl(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(BaseModel):
    """One part of a message: {"type": "text", "text": ...} or {"type": "image_url", "image_url": {"url": ...}}.

    One model rather than a union of two, so a validation error names the field, not a union branch.
    """

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None

    @model_validator(mode="after")
    def _has_its_field(self) -> ContentPart:
        if getattr(self, self.type) is None:
            raise ValueError(f"a '{self.type}' part needs its '{self.type}' field")
        return self


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: list[ContentPart]
    """A string arrives as one text part."""

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, content: Any) -> Any:
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise ValueError("content must be a string or a list of text and image_url parts")
        return content


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat completion request the Engine can honour; others are ignored."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    """Not in OpenAI's API; accepted as vLLM does."""
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}); send a JSON object with 'messages'",
                       code="invalid_json") from exc
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object with 'messages', not {type(data).__name__}")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"invalid request: {param}: {first['msg']}", code="invalid_value", param=param) from exc


def to_engine_request(body: ChatCompletionRequest, config: ServerConfig, reserved: frozenset[str]) -> Request:
    """OpenAI messages -> the Engine's Request: each image part becomes an `<image>` placeholder and its image.

    Decoding images (and fetching allowlisted URLs) blocks, so callers run this off the event loop.
    """
    image_parts = [p for m in body.messages for p in m.content if p.type == "image_url"]
    if len(image_parts) > config.max_images_per_request:
        raise ApiError(400, f"the request has {len(image_parts)} images; this server takes at most "
                            f"{config.max_images_per_request} per request", code="too_many_images")
    images: list[Image.Image] = []
    messages = []
    for i, message in enumerate(body.messages):
        texts = []
        for j, part in enumerate(message.content):
            where = f"messages.{i}.content.{j}"
            if part.type == "image_url":
                images.append(load_image(part.image_url.url, f"{where}.image_url", config))
                texts.append(IMAGE)
            else:
                _refuse_special_tokens(part.text, where, reserved)
                texts.append(part.text)
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": "\n".join(texts)})
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    params = SamplingParams(
        max_new_tokens=body.max_completion_tokens or body.max_tokens or config.default_max_tokens,
        temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, stop=stop,
        seed=secrets.randbelow(2**31) if body.seed is None else body.seed,  # unseeded requests must differ
    )
    return Request(messages, images, params)


def _refuse_special_tokens(text: str, where: str, reserved: frozenset[str]) -> None:
    """Text must not smuggle in the tokenizer's control tokens (an `<image>` slot, a fake chat turn)."""
    found = sorted(token for token in reserved if token in text)
    if found:
        raise ApiError(400, f"{where} contains the model's reserved token(s) {', '.join(found)}; remove them "
                            "(send images as image_url parts)", code="reserved_token", param=where)


# --- images --------------------------------------------------------------------------------


def load_image(url: str, where: str, config: ServerConfig) -> Image.Image:
    """An image part's URL -> an RGB image, within the server's byte and pixel limits."""
    scheme = _scheme(url)
    if scheme == "data":
        data = data_uri_bytes(url, where)
    elif scheme in ("http", "https"):
        check_remote_url(url, config.allowed_image_hosts, where)
        data = fetch_image(url, config.max_body_bytes, config.image_fetch_timeout_s, where)
    else:
        raise ApiError(400, f"{where} must be a base64 data URI (data:image/png;base64,...)", code="invalid_image_url",
                       param=where)
    return decode_image(data, config.max_image_pixels, where)


def data_uri_bytes(url: str, where: str) -> bytes:
    header, sep, payload = url[len("data:"):].partition(",")
    media_type, *attributes = header.lower().split(";")
    if not media_type.startswith("image/"):
        raise ApiError(400, f"{where} is a data URI of type '{media_type or 'text/plain'}', not an image; send "
                            f"data:image/png;base64,... ({', '.join(IMAGE_FORMATS)})",
                       code="invalid_image", param=where)
    if not sep or "base64" not in attributes:
        raise ApiError(400, f"{where} must be base64-encoded: data:{media_type};base64,...", code="invalid_image",
                       param=where)
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ApiError(400, f"{where} is not valid base64 ({exc})", code="invalid_image", param=where) from exc


def decode_image(data: bytes, max_pixels: int, where: str) -> Image.Image:
    """Check the declared size before decoding, so a small file cannot expand into gigabytes."""
    too_large = f"over this server's limit of {max_pixels:,} pixels; downscale it"
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own, higher limit
        raise ApiError(400, f"{where} is {too_large} ({exc})", code="image_too_large", param=where) from exc
    except Exception as exc:  # Pillow raises many types on hostile input
        raise ApiError(400, f"{where} is not a {', '.join(IMAGE_FORMATS)} image ({exc})", code="invalid_image",
                       param=where) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(400, f"{where} is {width}x{height} = {width * height:,} pixels, {too_large}",
                       code="image_too_large", param=where)
    try:
        return image.convert("RGB")
    except Exception as exc:
        raise ApiError(400, f"{where} could not be decoded ({exc}); the file is truncated or corrupt",
                       code="invalid_image", param=where) from exc


def check_remote_url(url: str, allowed_hosts: Sequence[str], where: str) -> None:
    """Refuse an http(s) image URL unless its host is on the allowlist (exact, case-insensitive match)."""
    if len(url) > MAX_URL_CHARS:
        raise ApiError(400, f"{where} is a URL of over {MAX_URL_CHARS} characters", code="invalid_image_url",
                       param=where)
    try:
        host = (urlsplit(url).hostname or "").rstrip(".")
    except ValueError as exc:
        raise ApiError(400, f"{where} is not a valid URL ({exc})", code="invalid_image_url", param=where) from exc
    if host not in {h.lower().rstrip(".") for h in allowed_hosts}:
        raise ApiError(400, f"{where}: remote image URLs are refused unless their host is on the server's "
                            f"allowed_image_hosts ('{host}' is not); send the image inline as "
                            "data:image/png;base64,...", code="image_url_not_allowed", param=where)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect could lead off the allowlist; urllib then raises HTTPError


def fetch_image(url: str, max_bytes: int, timeout_s: float, where: str) -> bytes:
    """GET an allowlisted image URL: no redirects, at most `max_bytes`, within `timeout_s` in total."""
    deadline = time.monotonic() + timeout_s
    data = bytearray()
    try:
        with urllib.request.build_opener(_NoRedirects).open(url, timeout=timeout_s) as response:
            while chunk := response.read(2**16):
                data += chunk
                if len(data) > max_bytes:
                    raise ApiError(413, f"{where}: {url} is over this server's limit of {max_bytes:,} bytes",
                                   code="image_too_large", param=where)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not complete after {timeout_s:g} s")
    except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
        raise ApiError(400, f"{where}: fetching {url} failed ({exc})", code="image_fetch_failed", param=where) from exc
    return bytes(data)


def _scheme(url: str) -> str:
    """The URL's scheme, read without urlsplit: it caches its inputs, and would keep megabyte data URIs alive."""
    head, sep, _ = url[:16].partition(":")
    return head.lower() if sep else ""


# --- the worker that owns the Engine ----------------------------------------------------------


@dataclass
class _Job:
    request: Request
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class StreamStarted:
    prompt_tokens: int


@dataclass
class StreamFinished:
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


@dataclass
class _StreamJob:
    """A streaming request: the worker hands its events to the event loop as they come."""

    request: Request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    """StreamStarted, then text pieces, then StreamFinished; or an exception instead of the rest."""
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: StreamStarted | str | StreamFinished | Exception) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled.set()


_STOP = object()


class BatchWorker:
    """The one thread that touches the Engine.

    It takes the first queued request, waits up to `wait_s` for more (up to the Engine's
    max_batch_size) and generates them together. A streaming request runs alone through
    `Engine.stream`. Each request's prompt is checked on its own first, so one bad
    request fails alone instead of failing its whole batch.
    """

    def __init__(self, engine: Engine, wait_s: float, max_queued: int):
        self.engine = engine
        self.wait_s = wait_s
        self.max_queued = max_queued
        self._queue: queue.Queue = queue.Queue()
        self._held: _Job | _StreamJob | object | None = None
        self._thread = threading.Thread(target=self._run, name="vlstack-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, request: Request) -> concurrent.futures.Future:
        """Queue a request; the future resolves to its Result (or the Engine's exception)."""
        job = _Job(request)
        self._put(job)
        return job.future

    def submit_stream(self, request: Request) -> _StreamJob:
        """Queue a streaming request; call from the event loop that will read its events."""
        job = _StreamJob(request, asyncio.get_running_loop())
        self._put(job)
        return job

    def _put(self, job: _Job | _StreamJob) -> None:
        if self._queue.qsize() >= self.max_queued:
            raise ApiError(503, f"the server is busy ({self.max_queued} requests are waiting); retry shortly",
                           code="server_busy")
        self._queue.put(job)

    def _run(self) -> None:
        while True:
            job = self._held if self._held is not None else self._queue.get()
            self._held = None
            if job is _STOP:
                return
            if isinstance(job, _StreamJob):
                self._stream(job)
            else:
                self._generate(self._gather(job))

    def _gather(self, first: _Job) -> list[_Job]:
        batch = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.engine.config.max_batch_size:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not isinstance(job, _Job):
                self._held = job  # a streaming request or the stop signal goes next, alone
                break
            batch.append(job)
        return batch

    def _generate(self, batch: list[_Job]) -> None:
        ready = [job for job in batch if job.future.set_running_or_notify_cancel() and self._prompt_fits(job)]
        if not ready:
            return
        try:
            results = self.engine.generate([job.request for job in ready])
        except Exception as exc:
            for job in ready:
                job.future.set_exception(exc)
            return
        for job, result in zip(ready, results):
            job.future.set_result(result)

    def _prompt_fits(self, job: _Job) -> bool:
        try:
            self.engine.prompt_ids(job.request)
        except Exception as exc:
            job.future.set_exception(exc)
            return False
        return True

    def _stream(self, job: _StreamJob) -> None:
        if job.cancelled.is_set():
            return
        try:
            job.emit(StreamStarted(len(self.engine.prompt_ids(job.request))))
            generated = self.engine.stats.generated_tokens
            with closing(self.engine.stream(job.request)) as pieces:
                for piece in pieces:
                    if job.cancelled.is_set():
                        return
                    job.emit(piece)
        except Exception as exc:
            job.emit(exc)
            return
        # Engine.stream does not report its finish reason; hitting the budget is read as "length"
        completion = self.engine.stats.generated_tokens - generated
        job.emit(StreamFinished(completion, "length" if completion >= job.request.params.max_new_tokens else "stop"))


# --- metrics -----------------------------------------------------------------------------------


class _EngineCollector(Collector):
    """Engine and cache figures, read at scrape time."""

    def __init__(self, engine: Engine, worker: BatchWorker):
        self.engine, self.worker = engine, worker

    def collect(self):
        stats, cache = self.engine.stats, self.engine.cache.stats()
        yield CounterMetricFamily("vlstack_generated_tokens", "Tokens generated by the Engine.",
                                  value=stats.generated_tokens)
        yield GaugeMetricFamily("vlstack_generated_tokens_per_second",
                                "Generated tokens per second of decoding, since start.", value=stats.tokens_per_second)
        yield CounterMetricFamily("vlstack_image_cache_hits", "Image-feature cache hits.", value=cache.hits)
        yield CounterMetricFamily("vlstack_image_cache_misses", "Image-feature cache misses.", value=cache.misses)
        yield GaugeMetricFamily("vlstack_image_cache_hit_rate", "Hits / lookups of the image-feature cache.",
                                value=cache.hit_rate)
        yield GaugeMetricFamily("vlstack_image_cache_bytes", "Bytes held by the image-feature cache.",
                                value=cache.bytes)
        yield GaugeMetricFamily("vlstack_queued_requests", "Requests waiting for the Engine.",
                                value=self.worker.queued)


class Metrics:
    """Prometheus figures for one app: requests by path and status, latency, and the Engine's."""

    def __init__(self, engine: Engine, worker: BatchWorker):
        self.registry = CollectorRegistry()
        self.requests = Counter("vlstack_requests", "HTTP requests by path and status code.", ["path", "status"],
                                registry=self.registry)
        self.latency = Histogram("vlstack_request_duration_seconds", "Time to the end of the response.", ["path"],
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                                 registry=self.registry)
        self.registry.register(_EngineCollector(engine, worker))

    def observe(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- ASGI middleware ---------------------------------------------------------------------------


class _CountRequests:
    """Count every response by path and status, bad requests and failures included."""

    def __init__(self, app, metrics: Metrics, paths: frozenset[str]):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            path = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.observe(path, status, time.perf_counter() - started)


class _LimitBody:
    """Refuse a body over `max_bytes` with 413 before it is parsed: by its Content-Length, or while it arrives."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        error = ApiError(413, f"the request body is over this server's limit of {self.max_bytes:,} bytes; send "
                              "smaller or fewer images", code="request_too_large")
        await error.response()(scope, receive, send)


# --- the app -----------------------------------------------------------------------------------


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    """The FastAPI app: OpenAI-compatible routes, health, metrics and the chat page.

    It owns a worker thread for the Engine, started and stopped with the app's lifespan;
    nothing else may use the Engine while the app runs.
    """
    worker = BatchWorker(engine, config.batch_wait_ms / 1000, config.max_queued_requests)
    metrics = Metrics(engine, worker)
    reserved = frozenset(t.content for t in engine.tokenizer.added_tokens_decoder.values() if t.special)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        await run_in_threadpool(worker.stop)

    app = FastAPI(title="vlstack", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    authorized = [Depends(_bearer_check(config.api_key))] if config.api_key else []

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat_completions(http: HttpRequest):
        body = await run_in_threadpool(parse_chat_request, await http.body())  # megabytes of JSON
        if body.model not in (None, config.model_name):
            raise ApiError(404, f"the model '{body.model}' is not served here; this server serves "
                                f"'{config.model_name}' (see /v1/models)", code="model_not_found", param="model")
        request = await run_in_threadpool(to_engine_request, body, config, reserved)
        reply = _Reply(config.model_name)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await _stream(worker, request, reply, include_usage)
        result = await asyncio.wrap_future(worker.submit(request))
        return reply.completion(result)

    @app.get("/v1/models", dependencies=authorized)
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "vlstack"}]}

    @app.get("/health")
    async def health():
        if not worker.alive:
            raise ApiError(503, "the Engine worker is not running; restart the server", code="worker_down")
        return {"status": "ok", "model": config.model_name, "queued_requests": worker.queued}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/")
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return exc.response({"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    @app.exception_handler(InputError)
    async def input_error(request, exc: InputError):
        return ApiError(400, str(exc), code="invalid_request").response()

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}").response(exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):  # Starlette re-raises it afterwards, so it is logged
        return ApiError(500, "internal server error; the server log has the details").response()

    app.add_middleware(_LimitBody, max_bytes=config.max_body_bytes)
    app.add_middleware(_CountRequests, metrics=metrics, paths=frozenset(r.path for r in app.routes))
    return app


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def _bearer_check(api_key: str):
    expected = api_key.encode()

    async def check(http: HttpRequest) -> None:
        scheme, _, given = http.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), expected):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")

    return check


@dataclass
class _Reply:
    """One completion's id, time and model, shared by its response or all of its stream's chunks."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def completion(self, result: Result) -> dict[str, Any]:
        return {**self._head("chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "logprobs": None, "finish_reason": result.finish_reason}],
                "usage": _usage(result.prompt_tokens, len(result.token_ids))}

    def chunk(self, delta: dict[str, str] | None, finish_reason: str | None = None,
              usage: dict[str, int] | None = None) -> str:
        """One server-sent event; `delta=None` makes the usage-only chunk (no choices)."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish_reason}]
        return _event({**self._head("chat.completion.chunk"), "choices": choices,
                       **({"usage": usage} if usage else {})})

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(worker: BatchWorker, request: Request, reply: _Reply, include_usage: bool) -> StreamingResponse:
    """Wait until the worker has checked the prompt, so a bad one is still a 4xx, then stream its events."""
    job = worker.submit_stream(request)
    try:
        started = await job.events.get()
        if isinstance(started, Exception):
            raise started
    except BaseException:
        job.cancelled.set()
        raise
    return StreamingResponse(_sse(job, reply, started.prompt_tokens, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(job: _StreamJob, reply: _Reply, prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        while True:
            event = await job.events.get()
            if isinstance(event, str):
                yield reply.chunk({"content": event})
            elif isinstance(event, StreamFinished):
                yield reply.chunk({}, event.finish_reason)
                if include_usage:
                    yield reply.chunk(None, usage=_usage(prompt_tokens, event.completion_tokens))
                break
            else:
                log.error("streaming failed", exc_info=event)
                yield _event(error_body("generation failed; the server log has the details", 500))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client may have gone: stop decoding for it


# --- running -----------------------------------------------------------------------------------


def serve(config: ServerConfig) -> None:
    """Load the checkpoint and serve until interrupted (`vlstack serve`)."""
    import uvicorn

    if not config.model:
        raise ConfigError("serve needs a checkpoint directory: vlstack serve --model CKPT")
    config = replace(config, api_key=config.api_key or os.environ.get(API_KEY_ENV) or None)
    if config.api_key is None and not _is_loopback(config.host):
        log.warning("serving on %s without an API key: anyone who can reach it can use the model; "
                    "set --api-key or $%s", config.host, API_KEY_ENV)
    app = create_app(Engine.from_checkpoint(config.model, config.engine), config)
    uvicorn.run(app, host=config.host, port=config.port, timeout_graceful_shutdown=10)


@contextmanager
def serve_in_background(app: FastAPI, startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Run `app` from a background thread on a free loopback port; yields its base URL, stops it on exit.

    For notebooks, applications that embed the server, and tests. The socket is bound
    before the server starts, so no other process can take the port in between.
    """
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="vlstack-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server did not start within {startup_timeout_s:g} s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(startup_timeout_s)
        sock.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
