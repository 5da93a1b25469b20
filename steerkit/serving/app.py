"""The HTTP application: OpenAI endpoints, profile endpoints, the playground and the atlas page."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from steerkit.errors import SteerkitError
from steerkit.plan import compile_plan
from steerkit.profile import load_profile, parse_profile
from steerkit.prompts import RawText
from steerkit.runtimes.base import Backend
from steerkit.sampling import check_max_tokens
from steerkit.serving.requests import (MAX_BODY_BYTES, ApiError, StopFilter, parse_extension, parse_model_name,
                                       request_messages, request_sampling, request_stops)
from steerkit.serving.store import ProfileStore, folder_profiles

__all__ = ["ServerState", "create_app", "serve"]


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
            chosen, overall, enabled = parse_extension(body["steerkit"])
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


class _Cancelled(Exception):
    """Raised inside the generating thread to stop it (client gone, or a stop sequence reached)."""


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

    async def read_body(request: Request) -> bytes:
        """The body, refused past 1 MiB however it is sent (a chunked body has no Content-Length)."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
        return body

    async def read_json(request: Request) -> dict:
        body = await read_body(request)
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
        body = await read_body(request)
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

    async def complete(body: dict, prompt, chat: bool):
        """Answer one request, streamed or not, in the chat or the plain completion shape."""
        stops, sampling = request_stops(body), request_sampling(body)
        max_tokens = next((body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None), 256)
        try:
            check_max_tokens(max_tokens)
        except SteerkitError as exc:
            raise ApiError(400, str(exc), param="max_tokens") from None
        plan = state.plan_for(body)
        prompt_tokens, _ = state.backend.count_tokens(prompt, "")
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
                return state.backend.generate([prompt], [plan], max_tokens, sampling, on_text)[0][0]
            except _Cancelled:
                return ""

        future = loop.run_in_executor(state.executor, run)

        def done(_) -> None:
            state.waiting -= 1  # the slot is held until the thread is done, even if the client left early
            pieces.put_nowait(None)

        future.add_done_callback(done)
        ident, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        kind = "chat.completion" if chat else "text_completion"

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
                answer_tokens = state.backend.count_tokens(prompt, text)[1]
                reason = "stop" if stop_filter.stopped or answer_tokens < max_tokens else "length"
                yield reason, {"prompt_tokens": prompt_tokens, "completion_tokens": answer_tokens,
                               "total_tokens": prompt_tokens + answer_tokens}
            finally:
                cancel.set()  # the client went away, or we are done: the thread stops at its next token

        def choice(text: str | None, reason: str | None, delta: dict | None = None) -> dict:
            if chat:
                key, value = ("message", {"role": "assistant", "content": text}) if delta is None else ("delta", delta)
                return {"index": 0, key: value, "finish_reason": reason}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}

        if not body.get("stream"):
            text, reason, usage = "", None, None
            async for item in collect():
                if isinstance(item, tuple):
                    reason, usage = item
                else:
                    text += item
            return {"id": ident, "object": kind, "created": created, "model": model,
                    "choices": [choice(text, reason)], "usage": usage}

        include_usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")

        def event(text: str | None, reason: str | None = None, usage: dict | None = None, delta: dict | None = None):
            data = {"id": ident, "object": kind + (".chunk" if chat else ""), "created": created, "model": model,
                    "choices": [choice(text, reason, delta if chat else None)]}
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        async def events():
            if chat:
                yield event(None, delta={"role": "assistant", "content": ""})
            try:
                async for item in collect():
                    if isinstance(item, tuple):
                        yield event("", item[0], item[1] if include_usage else None, delta={})
                    else:
                        yield event(item, delta={"content": item})
            except SteerkitError as exc:
                yield f"data: {json.dumps(ApiError(400, str(exc)).body())}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    @endpoint
    async def chat_completions(request: Request):
        body = await read_json(request)
        return await complete(body, request_messages(body), chat=True)

    @app.post("/v1/completions")
    @endpoint
    async def completions(request: Request):
        body = await read_json(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "prompt: expected a non-empty string", param="prompt")
        return await complete(body, RawText(prompt), chat=False)

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
          dtype: str = "float32", max_loaded: int = 2, log: Callable[[str], None] = print) -> None:
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
    if not 1 <= max_loaded <= 64:
        raise SteerkitError("--max-loaded must be 1..64")
    # A folder's profiles are read (a wrong path or a bad file refused) before the model loads.
    extra = [load_profile(path) for path in folder_profiles(profiles_folder)] if profiles_folder is not None else []
    backend = load_backend(source, runtime, device, dtype)
    if hasattr(backend, "max_loaded"):  # backends that keep patched copies loaded
        backend.max_loaded = max_loaded
    model_id = source.name if source.name in EMBEDDED_MODELS else source.path.stem
    state = ServerState(backend, model_id, max_queue, api_key, source)
    state.profiles.load_shipped()
    for profile in extra:
        state.profiles.add(profile)
    log(f"serving {state.model_id} on http://{host}:{port} (runtime {backend.name}; "
        f"{len(state.profiles.names())} profiles; models {state.model_id}+PROFILE[@STRENGTH])")
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=30)
    uvicorn.Server(config).run()
