"""``steerkit serve``: an OpenAI-compatible API where every request picks its own steering.

Steering is chosen per request, two ways any client can use:

* the model name: ``smollm2-135m`` (unsteered), ``smollm2-135m+dog``, ``smollm2-135m+dog@0.5+no-music``
  (``@`` sets one profile's strength), so a client that only lets a user pick a model still works;
* an extension object in the body: ``"steerkit": {"profiles": ["dog", {"name": "no-music",
  "strength": 0.5}], "strength": 1.0, "enabled": true}`` (it replaces what the model name says).

Every request runs through the same :class:`~steerkit.runtimes.base.Backend` call as ``steerkit
generate``, from an empty KV cache, so nothing leaks between requests and a steered answer is the one
``generate`` gives.  One request computes at a time (llama.cpp's threads busy-wait: two contexts on
these cores each run several times slower); the others wait in a bounded queue, and a full queue
answers 429.  Profile names are looked up in the store, never joined into paths.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from steerkit.errors import SteerkitError
from steerkit.plan import compile_plan
from steerkit.profile import Profile, load_profile, parse_profile
from steerkit.runtimes.base import Backend
from steerkit.sampling import CHAT, Sampling, check_max_tokens
from steerkit.session import check_strength
from steerkit.shipped import shipped_names, shipped_profile

__all__ = ["ProfileStore", "ServerState", "create_app", "parse_model_name"]

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


class ProfileStore:
    """The profiles a server offers, by name: shipped ones that fit the model, a folder's, and added ones."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._profiles: dict[str, Profile] = {}
        self._figures: dict[str, dict] = {}
        self._lock = threading.Lock()

    def _fits(self, profile: Profile) -> bool:
        try:
            self.backend.check(compile_plan([profile], self.backend.binding))
            return True
        except SteerkitError:
            return False

    def load_shipped(self) -> None:
        """Every shipped profile that fits the model and the backend, with its measured figures."""
        from steerkit.shipped import shipped_dir

        summary_path = shipped_dir() / "eval" / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        for name in shipped_names():
            profile = load_profile(shipped_profile(name))
            if self._fits(profile):
                self._profiles[name] = profile
                if name in summary:
                    self._figures[name] = {k: v for k, v in summary[name].items() if k.startswith(("mention", "nll"))}

    def load_folder(self, folder) -> None:
        """Every ``*.yaml`` in ``folder`` (each must validate and fit the model)."""
        from pathlib import Path

        for path in sorted(Path(folder).glob("*.yaml")):
            self.add(load_profile(path))

    def add(self, profile: Profile, replace: bool = False) -> Profile:
        if not NAME.match(profile.name):
            raise SteerkitError(f"profile name {profile.name[:70]!r}: expected 1-64 letters, digits, '-', '_' or '.'")
        self.backend.check(compile_plan([profile], self.backend.binding))
        with self._lock:
            if profile.name in self._profiles and not replace:
                raise SteerkitError(f"profile {profile.name!r} exists already")
            self._profiles[profile.name] = profile
            self._figures.pop(profile.name, None)
        return profile

    def remove(self, name: str) -> None:
        with self._lock:
            if self._profiles.pop(name, None) is None:
                raise KeyError(name)

    def get(self, name: str) -> Profile:
        with self._lock:
            profile = self._profiles.get(name)
        if profile is None:
            raise ApiError(404, f"unknown profile {name[:70]!r} (see /v1/profiles)", param="model",
                           code="profile_not_found")
        return profile

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._profiles)

    def describe(self, name: str) -> dict:
        profile = self.get(name)
        return {"name": name, "description": profile.description, "positions": profile.positions,
                "strength": profile.strength, "edits": [f"{e.layer}:{e.neuron} {e.op} {e.value:g}" for e in profile.edits],
                "neurons": [f"{e.layer}:{e.neuron}" for e in profile.edits], "measured": self._figures.get(name)}


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


def _extension(value: Any) -> tuple[list[tuple[str, float | None]], float | None, bool]:
    """The ``steerkit`` body object: (profiles with strengths, overall strength, enabled)."""
    if not isinstance(value, dict) or not set(value) <= {"profiles", "strength", "enabled"}:
        raise ApiError(400, "steerkit: expected an object with profiles, strength and enabled", param="steerkit")
    chosen = []
    for item in value.get("profiles", []) if isinstance(value.get("profiles", []), list) else [None]:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not set(item) <= {"name", "strength"}:
            raise ApiError(400, "steerkit.profiles: expected names or {name, strength} objects", param="steerkit.profiles")
        chosen.append((item["name"], _number(item.get("strength"), "steerkit.profiles.strength")))
    enabled = value.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ApiError(400, "steerkit.enabled: expected true or false", param="steerkit.enabled")
    return chosen, _number(value.get("strength"), "steerkit.strength"), enabled


def _number(value: Any, param: str) -> float | None:
    if value is None:
        return None
    try:
        return check_strength(value)
    except SteerkitError as exc:
        raise ApiError(400, f"{param}: {exc}", param=param) from None


class ServerState:
    """The loaded backend, the profile store, the one computing thread and the queue bound."""

    def __init__(self, backend: Backend, model_id: str, max_queue: int = 8, api_key: str | None = None,
                 source=None) -> None:
        self.backend, self.model_id, self.api_key, self.source = backend, model_id, api_key, source
        self.profiles = ProfileStore(backend)
        self.max_queue = max_queue
        self.waiting = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steerkit-generate")
        self.started = int(time.time())

    def atlas_page(self):
        """The atlas page of the served model, written once into steerkit's cache."""
        from steerkit.atlas import atlas_for
        from steerkit.atlas_html import write_atlas_html
        from steerkit.cache import cache_dir
        from steerkit.weights import open_weights

        reader = open_weights(self.source)
        path = cache_dir("atlas") / f"{reader.fingerprint()[:24]}.html"
        if not path.is_file():
            write_atlas_html(atlas_for(reader, progress=False), path)
        return path

    def plan_for(self, body: dict):
        """The plan a request asks for (model name, then the extension object), or ``None``."""
        chosen, overall, enabled = parse_model_name(body.get("model"), self.model_id), None, True
        if "steerkit" in body:
            chosen, overall, enabled = _extension(body["steerkit"])
        if not enabled or not chosen:
            return None
        profiles = []
        for name, strength in chosen:
            profile = self.profiles.get(name)
            factor = strength if strength is not None else overall
            profiles.append(dataclasses.replace(profile, strength=factor) if factor is not None else profile)
        plan = compile_plan(profiles, self.backend.binding)
        self.backend.check(plan)
        return plan


def _sampling(body: dict) -> Sampling:
    """OpenAI's fields; anything left out decodes as ``steerkit generate`` does by default."""
    temperature = body.get("temperature", CHAT.temperature)
    try:
        return Sampling(temperature=temperature if temperature is not None else CHAT.temperature,
                        top_p=body.get("top_p") if body.get("top_p") is not None else CHAT.top_p,
                        repetition_penalty=CHAT.repetition_penalty,
                        seed=body.get("seed") if body.get("seed") is not None else CHAT.seed)
    except SteerkitError as exc:
        raise ApiError(400, str(exc)) from None


def _messages(body: dict) -> list[dict]:
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


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop: expected a string or up to 4 non-empty strings", param="stop")
    return stops


class _Cancelled(Exception):
    """Raised inside the generating thread to stop it (client gone, or a stop sequence reached)."""


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


def create_app(state: ServerState):
    """The FastAPI application over ``state``."""
    app = FastAPI(title="steerkit", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            if request.url.path.startswith("/v1/") and state.api_key is not None:
                if request.headers.get("authorization") != f"Bearer {state.api_key}":
                    raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                   kind="authentication_error", code="invalid_api_key")
            size = request.headers.get("content-length")
            if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
                raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
            return await call_next(request)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    async def read_json(request: Request) -> dict:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object")
        return data

    def endpoint(handler: Callable):
        async def wrapped(request: Request):
            try:
                return await handler(request)
            except ApiError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)
            except SteerkitError as exc:
                return JSONResponse(ApiError(400, str(exc)).body(), status_code=400)
        wrapped.__name__ = handler.__name__
        return wrapped

    @app.get("/v1/models")
    @endpoint
    async def models(request: Request):
        ids = [state.model_id] + [f"{state.model_id}+{name}" for name in state.profiles.names()]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": state.started,
                                            "owned_by": "steerkit"} for i in ids]}

    @app.get("/v1/profiles")
    @endpoint
    async def list_profiles(request: Request):
        return {"object": "list", "data": [state.profiles.describe(n) for n in state.profiles.names()]}

    @app.post("/v1/profiles")
    @endpoint
    async def add_profile(request: Request):
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "profile: not UTF-8 text") from None
        profile = state.profiles.add(parse_profile(text, "profile.yaml"))
        return JSONResponse(state.profiles.describe(profile.name), status_code=201)

    @app.delete("/v1/profiles/{name}")
    @endpoint
    async def remove_profile(request: Request):
        name = request.path_params["name"]
        try:
            state.profiles.remove(name)
        except KeyError:
            raise ApiError(404, f"unknown profile {name[:70]!r}", code="profile_not_found") from None
        return {"id": name, "object": "profile", "deleted": True}

    @app.post("/v1/chat/completions")
    @endpoint
    async def chat_completions(request: Request):
        body = await read_json(request)
        messages, stops, sampling = _messages(body), _stops(body), _sampling(body)
        max_tokens = next((body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None), 256)
        try:
            check_max_tokens(max_tokens)
        except SteerkitError as exc:
            raise ApiError(400, str(exc), param="max_tokens") from None
        plan = state.plan_for(body)
        prompt_tokens, _ = state.backend.count_tokens(messages, "")
        model = body.get("model") or state.model_id
        if state.waiting >= state.max_queue:
            raise ApiError(429, "the server is busy: too many requests waiting; retry later",
                           kind="rate_limit_error", code="queue_full")
        state.waiting += 1
        cancel, loop = threading.Event(), asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        stop_filter = StopFilter(stops)

        def on_text(piece: str) -> None:
            if cancel.is_set():
                raise _Cancelled()
            out = stop_filter.feed(piece)
            if out:
                loop.call_soon_threadsafe(pieces.put_nowait, out)
            if stop_filter.stopped:
                raise _Cancelled()

        def run() -> str:
            try:
                return state.backend.generate([messages], [plan], max_tokens, sampling, on_text)[0][0]
            except _Cancelled:
                return ""

        future = loop.run_in_executor(state.executor, run)

        def done(_) -> None:
            state.waiting -= 1  # the slot is held until the thread is done, even if the client left early
            pieces.put_nowait(None)

        future.add_done_callback(done)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def finish(text: str) -> tuple[str, dict]:
            answer_tokens = state.backend.count_tokens(messages, text)[1]
            reason = "stop" if stop_filter.stopped or answer_tokens < max_tokens else "length"
            return reason, {"prompt_tokens": prompt_tokens, "completion_tokens": answer_tokens,
                            "total_tokens": prompt_tokens + answer_tokens}

        async def collect():
            text = ""
            try:
                while (piece := await pieces.get()) is not None:
                    text += piece
                    yield piece
                await future  # surfaces errors of the generating thread
                tail = stop_filter.flush()
                if tail:
                    text += tail
                    yield tail
                yield finish(text)
            finally:
                cancel.set()  # the client went away, or we are done: the thread stops at its next token

        if not body.get("stream"):
            text, usage = "", None
            async for item in collect():
                if isinstance(item, tuple):
                    reason, usage = item
                else:
                    text += item
            return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": reason}], "usage": usage}

        include_usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")

        def chunk(delta: dict, reason: str | None = None, usage: dict | None = None) -> str:
            data = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for item in collect():
                    if isinstance(item, tuple):
                        reason, usage = item
                        yield chunk({}, reason, usage if include_usage else None)
                    else:
                        yield chunk({"content": item})
            except SteerkitError as exc:
                yield f"data: {json.dumps(ApiError(400, str(exc)).body())}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/atlas", response_class=HTMLResponse)
    async def atlas_page():
        """The neuron atlas of the served model (built once and cached; the first call can take a minute)."""
        loop = asyncio.get_running_loop()
        path = await loop.run_in_executor(state.executor, state.atlas_page)  # never beside a generation
        return path.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        from importlib import resources

        return resources.files("steerkit").joinpath("data", "playground.html").read_text(encoding="utf-8")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), code=str(exc.status_code)).body(),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(ApiError(400, "invalid request").body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error").body(),
                            status_code=500)

    return app


def serve(model: str | None = None, runtime: str | None = None, profiles_folder=None, host: str = "127.0.0.1",
          port: int = 8000, api_key: str | None = None, max_queue: int = 8, device: str = "cpu",
          dtype: str = "float32", log: Callable[[str], None] = print) -> None:
    """Load the model and serve it until SIGINT/SIGTERM (in-flight requests finish or are cancelled)."""
    import ipaddress

    import uvicorn

    from steerkit.runtimes.base import load_backend
    from steerkit.sources import EMBEDDED_MODELS, resolve_model

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise SteerkitError(f"--host {host[:60]!r}: expected an IP address or localhost") from None
    if not loopback and not api_key:
        raise SteerkitError(f"--host {host}: serving beyond this machine needs --api-key")
    if not 0 < port < 65536 or not 1 <= max_queue <= 1024:
        raise SteerkitError("--port must be 1..65535 and --max-queue 1..1024")
    source = resolve_model(model)
    backend = load_backend(source, runtime, device, dtype)
    model_id = source.name if source.name in EMBEDDED_MODELS else source.path.stem
    state = ServerState(backend, model_id, max_queue, api_key, source)
    state.profiles.load_shipped()
    if profiles_folder is not None:
        state.profiles.load_folder(profiles_folder)
    log(f"serving {state.model_id} on http://{host}:{port} (runtime {backend.name}; "
        f"{len(state.profiles.names())} profiles; models {state.model_id}+PROFILE[@STRENGTH])")
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=30)
    uvicorn.Server(config).run()
