"""Running the server: under uvicorn from the CLI, or in a background thread (tests, notebooks).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from fastapi import FastAPI

from vlstack.errors import ConfigError
from vlstack.infer.engine import Engine
from vlstack.infer.server.app import create_app
from vlstack.infer.server.config import API_KEY_ENV, ServerConfig

log = logging.getLogger(__name__)



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
