"""The server's settings, and errors in OpenAI's shape."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.responses import JSONResponse

from vlstack.infer.engine import EngineConfig

API_KEY_ENV = "VLSTACK_API_KEY"
STATIC_DIR = Path(__file__).parent.parent / "static"
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
    max_inflight_bytes: int = 1024 * 2**20
    """Bytes the requests being handled may hold at once: their decoded images (width x height x 3) and
    their text. A request that would go over gets 503 with Retry-After, before anything is decoded."""
    max_prompt_chars: int = 65536
    """Characters of text (all messages together) a request may send; checked before tokenising."""
    max_stop_strings: int = 4
    max_stop_chars: int = 256
    request_timeout_s: float = 300.0
    """A request not answered within this gets 504, and its decoding stops."""
    retry_after_s: int = 1
    """What a 503 tells the client to wait before retrying."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Used by `serve` to load the checkpoint; `create_app` takes a ready Engine."""



class ApiError(Exception):
    """A request the server refuses; rendered as OpenAI's `{"error": {...}}` with its status."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.status, self.code, self.param), self.status,
                            {**(self.headers or {}), **(headers or {})})


class ByteBudget:
    """Bytes that the requests in flight hold (decoded images, text); `reserve` refuses what would go over."""

    def __init__(self, limit: int, retry_after_s: int):
        self.limit, self.retry_after_s = limit, retry_after_s
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, what: str) -> int:
        with self._lock:
            if self.used + nbytes > self.limit:
                raise ApiError(503, f"the server is busy: {what} needs {nbytes:,} bytes and {self.used:,} of its "
                                    f"{self.limit:,} are in use; retry shortly", code="server_busy",
                               headers={"Retry-After": str(self.retry_after_s)})
            self.used += nbytes
        return nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


def error_body(message: str, status: int, code: str | None = None, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
