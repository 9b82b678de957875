"""OpenAI's chat request shape, and its translation into an Engine request with a 4xx that names
the bad field."""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from vlstack.infer.engine import Request, SamplingParams
from vlstack.infer.server.config import ApiError, ByteBudget, ServerConfig
from vlstack.infer.server.images import load_image
from vlstack.models.tokenizer import IMAGE

MAX_SEED = 2**63 - 1
MIN_TEMPERATURE = 0.01
"""Below this (and above 0) the tempered probabilities overflow or collapse: 0 asks for greedy decoding."""


def _encodable(text: str) -> str:
    """Text must be valid Unicode (JSON's \\ud800 escapes allow lone surrogates, which no tokenizer takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds a character that is not valid Unicode ({exc.reason} at position {exc.start})") from None
    return text


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

    @field_validator("text")
    @classmethod
    def _valid_text(cls, text: str | None) -> str | None:
        return None if text is None else _encodable(text)


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
    """0: greedy; otherwise at least MIN_TEMPERATURE."""
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, le=2**31 - 1)
    """Not in OpenAI's API; accepted as vLLM does."""
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("temperature")
    @classmethod
    def _usable_temperature(cls, temperature: float) -> float:
        if 0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}; smaller values overflow the "
                             "sampling probabilities")
        return temperature

    @field_validator("stop")
    @classmethod
    def _valid_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        for text in [stop] if isinstance(stop, str) else stop or []:
            if not text:
                raise ValueError("stop strings must not be empty")
            _encodable(text)
        return stop


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}); send a JSON object with 'messages'",
                       code="invalid_json") from exc
    except RecursionError:
        raise ApiError(400, "the request body nests JSON too deeply to parse; send a flat chat request",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object with 'messages', not {type(data).__name__}")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"invalid request: {param}: {first['msg']}", code="invalid_value", param=param) from exc


def to_engine_request(body: ChatCompletionRequest, config: ServerConfig, reserved: frozenset[str],
                      budget: ByteBudget, held: list[int]) -> Request:
    """OpenAI messages -> the Engine's Request: each image part becomes an `<image>` placeholder and its image.

    Every cap is checked before the work it bounds: the text's characters, the number and stop strings,
    and the memory budget for the text and each image (reserved into `held` before it is decoded; the
    caller releases them when the request is done). Decoding images (and fetching allowlisted URLs)
    blocks, so callers run this off the event loop.
    """
    image_parts = [p for m in body.messages for p in m.content if p.type == "image_url"]
    if len(image_parts) > config.max_images_per_request:
        raise ApiError(400, f"the request has {len(image_parts)} images; this server takes at most "
                            f"{config.max_images_per_request} per request", code="too_many_images")
    characters = sum(len(p.text) for m in body.messages for p in m.content if p.type == "text")
    if characters > config.max_prompt_chars:
        raise ApiError(400, f"the messages hold {characters:,} characters of text; this server takes at most "
                            f"{config.max_prompt_chars:,}", code="prompt_too_long", param="messages")
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stops) > config.max_stop_strings or any(len(s) > config.max_stop_chars for s in stops):
        raise ApiError(400, f"stop takes at most {config.max_stop_strings} strings of at most "
                            f"{config.max_stop_chars} characters", code="invalid_value", param="stop")
    held.append(budget.reserve(4 * characters, "the request's text"))
    images: list[Image.Image] = []
    messages = []
    for i, message in enumerate(body.messages):
        texts = []
        for j, part in enumerate(message.content):
            where = f"messages.{i}.content.{j}"
            if part.type == "image_url":
                images.append(load_image(part.image_url.url, f"{where}.image_url", config, budget, held))
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
