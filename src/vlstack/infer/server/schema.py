"""OpenAI's chat request shape, and its translation into an Engine request with a 4xx that names
the bad field."""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from vlstack.infer.engine import Request, SamplingParams
from vlstack.infer.server.config import ApiError, ServerConfig
from vlstack.infer.server.images import load_image
from vlstack.models.tokenizer import IMAGE


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
