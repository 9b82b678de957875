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

from importlib.util import find_spec

from vlstack.errors import ConfigError

_SERVE_EXTRA = ("fastapi", "uvicorn", "starlette", "pydantic", "prometheus_client")
_missing = [name for name in _SERVE_EXTRA if find_spec(name) is None]
if _missing:
    raise ConfigError(f"the server needs the serve extra ({', '.join(_missing)} missing): "
                      "pip install 'vlstack[serve]'")

from vlstack.infer.server.app import create_app  # noqa: E402
from vlstack.infer.server.config import ApiError, ServerConfig  # noqa: E402
from vlstack.infer.server.images import check_remote_url  # noqa: E402
from vlstack.infer.server.run import serve, serve_in_background  # noqa: E402
from vlstack.infer.server.worker import BatchWorker  # noqa: E402

__all__ = ["ApiError", "BatchWorker", "ServerConfig", "check_remote_url", "create_app", "serve",
           "serve_in_background"]
