"""Images of a chat request: base64 data URIs, or remote URLs from allowlisted hosts only (no
server-side request forgery); sizes checked before decoding.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import io
import socket
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

from PIL import Image

from vlstack.infer.server.config import (
    IMAGE_FORMATS,
    MAX_URL_CHARS,
    ApiError,
    ByteBudget,
    ServerConfig,
)


def load_image(url: str, where: str, config: ServerConfig, budget: ByteBudget | None = None,
               held: list[int] | None = None) -> Image.Image:
    """An image part's URL -> an RGB image, within the server's byte and pixel limits; with `budget`, the
    decoded image's bytes are reserved (into `held`) before it is decoded."""
    scheme = _scheme(url)
    if scheme == "data":
        data = data_uri_bytes(url, where)
    elif scheme in ("http", "https"):
        check_remote_url(url, config.allowed_image_hosts, where)
        data = fetch_image(url, config.max_body_bytes, config.image_fetch_timeout_s, where)
    else:
        raise ApiError(400, f"{where} must be a base64 data URI (data:image/png;base64,...)", code="invalid_image_url",
                       param=where)
    return decode_image(data, config.max_image_pixels, where, budget, held)


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


def decode_image(data: bytes, max_pixels: int, where: str, budget: ByteBudget | None = None,
                 held: list[int] | None = None) -> Image.Image:
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
    if budget is not None:
        held.append(budget.reserve(width * height * 3, f"{where} ({width}x{height})"))
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


def fetch_image(url: str, max_bytes: int, timeout_s: float, where: str) -> bytes:
    """GET an allowlisted image URL: no redirects (one could lead off the allowlist), at most `max_bytes`,
    within `timeout_s` of wall-clock time in all. A timer shuts the connection at the deadline, so a host
    that trickles bytes, or never ends its headers, cannot hold the request longer."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout_s)
    expired = threading.Event()

    def abort() -> None:
        expired.set()
        if connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout_s, abort)
    timer.start()
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target, headers={"User-Agent": "vlstack", "Accept": "image/*"})
        response = connection.getresponse()
        if response.status != 200:
            raise ApiError(400, f"{where}: fetching {url} failed: HTTP {response.status} {response.reason} (redirects "
                                "are not followed)", code="image_fetch_failed", param=where)
        data = bytearray()
        while chunk := response.read1(2**16):
            data += chunk
            if len(data) > max_bytes:
                raise ApiError(413, f"{where}: {url} is over this server's limit of {max_bytes:,} bytes",
                               code="image_too_large", param=where)
    except ApiError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets, malformed responses
        reason = f"not complete after {timeout_s:g} s" if expired.is_set() else f"{type(exc).__name__}: {exc}"
        raise ApiError(400, f"{where}: fetching {url} failed ({reason})", code="image_fetch_failed",
                       param=where) from None
    finally:
        timer.cancel()
        connection.close()
    if expired.is_set():
        raise ApiError(400, f"{where}: fetching {url} failed (not complete after {timeout_s:g} s)",
                       code="image_fetch_failed", param=where)
    return bytes(data)


def _scheme(url: str) -> str:
    """The URL's scheme, read without urlsplit: it caches its inputs, and would keep megabyte data URIs alive."""
    head, sep, _ = url[:16].partition(":")
    return head.lower() if sep else ""
