"""Reading an OpenAI-style request: the steering it asks for, its decoding settings, its messages.

Everything a client sends is checked here and refused with an OpenAI-shaped :class:`ApiError`.
"""

from __future__ import annotations

import re
from typing import Any

from steerkit.errors import SteerkitError
from steerkit.sampling import CHAT, Sampling
from steerkit.session import check_strength

__all__ = ["ApiError", "NAME", "MAX_BODY_BYTES", "parse_model_name", "parse_extension", "request_sampling",
           "request_messages", "request_stops", "StopFilter"]

MAX_BODY_BYTES = 1 << 20
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ApiError(Exception):
    """An error answered as an OpenAI-shaped JSON body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def parse_model_name(model: str | None, base: str) -> list[tuple[str, float | None]]:
    """``base+dog@0.5+no-music`` -> ``[("dog", 0.5), ("no-music", None)]``; the base part must match."""
    if not model:
        return []
    head, *parts = model.split("+")
    if head != base:
        raise ApiError(404, f"unknown model {model[:100]!r}: models here are {base!r} and {base}+PROFILE[@STRENGTH]...",
                       param="model", code="model_not_found")
    chosen = []
    for part in parts:
        name, _, strength = part.partition("@")
        if not NAME.match(name):
            raise ApiError(400, f"model {model[:100]!r}: {name[:70]!r} is not a profile name", param="model")
        try:
            chosen.append((name, check_strength(float(strength)) if strength else None))
        except (ValueError, SteerkitError):
            raise ApiError(400, f"model {model[:100]!r}: strength {strength[:30]!r} is not a finite number",
                           param="model") from None
    return chosen


def parse_extension(value: Any) -> tuple[list[tuple[str, float | None]], float | None, bool]:
    """The ``steerkit`` body object: (profiles with strengths, overall strength, enabled)."""
    if not isinstance(value, dict) or not set(value) <= {"profiles", "strength", "enabled"}:
        raise ApiError(400, "steerkit: expected an object with profiles, strength and enabled", param="steerkit")
    chosen = []
    for item in value.get("profiles", []) if isinstance(value.get("profiles", []), list) else [None]:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not set(item) <= {"name", "strength"}:
            raise ApiError(400, "steerkit.profiles: expected names or {name, strength} objects", param="steerkit.profiles")
        chosen.append((item["name"], _strength(item.get("strength"), "steerkit.profiles.strength")))
    enabled = value.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ApiError(400, "steerkit.enabled: expected true or false", param="steerkit.enabled")
    return chosen, _strength(value.get("strength"), "steerkit.strength"), enabled


def _strength(value: Any, param: str) -> float | None:
    if value is None:
        return None
    try:
        return check_strength(value)
    except SteerkitError as exc:
        raise ApiError(400, f"{param}: {exc}", param=param) from None


def request_sampling(body: dict) -> Sampling:
    """OpenAI's fields; anything left out decodes as ``steerkit generate`` does by default."""
    temperature = body.get("temperature", CHAT.temperature)
    try:
        return Sampling(temperature=temperature if temperature is not None else CHAT.temperature,
                        top_p=body.get("top_p") if body.get("top_p") is not None else CHAT.top_p,
                        repetition_penalty=CHAT.repetition_penalty,
                        seed=body.get("seed") if body.get("seed") is not None else CHAT.seed)
    except SteerkitError as exc:
        raise ApiError(400, str(exc)) from None


def request_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: expected a non-empty list", param="messages")
    clean = []
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise ApiError(400, f"messages[{k}]: expected {{role: system|user|assistant, content: string}}",
                           param="messages")
        clean.append({"role": message["role"], "content": message["content"]})
    return clean


def request_stops(body: dict) -> list[str]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop: expected a string or up to 4 non-empty strings", param="stop")
    return stops


class StopFilter:
    """Passes text through until a stop sequence; holds back what could be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.buffer, self.stopped = stops, "", False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buffer += piece
        for stop in self.stops:
            if stop in self.buffer:
                self.stopped = True
                out, self.buffer = self.buffer[: self.buffer.index(stop)], ""
                return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])), default=0)
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out
