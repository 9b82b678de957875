"""The server's settings, and errors in OpenAI's shape."""

from __future__ import annotations

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
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Used by `serve` to load the checkpoint; `create_app` takes a ready Engine."""



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
