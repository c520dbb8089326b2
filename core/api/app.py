"""The FastAPI application: OpenAI's routes over an :class:`~core.api.engine.Engine`.

Routes: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``POST /v1/completions``. Every error, including malformed JSON and unknown routes, is answered in
OpenAI's error format (:mod:`core.api.errors`). With an API key, every ``/v1/`` route needs
``Authorization: Bearer <key>``; ``/health`` stays open for monitoring.
"""
from __future__ import annotations

import hmac
import json
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from core.api.engine import Engine, GenerationJob, GenerationResult
from core.api.errors import ApiError, bad_api_key, from_blossom_error, unknown_model
from core.api.runner import EventStreamResponse, Run, Runner, first_event, wait_or_cancel
from core.api.schemas import ChatCompletionRequest, CompletionRequest, Envelope, model_card, new_id, now, usage
from core.errors import BlossomError

logger = logging.getLogger(__name__)

DEFAULT_CHAT_MAX_TOKENS = 512
"""An answer without ``max_tokens`` stops here at the latest (OpenAI lets it fill the context; on a swarm of
home PCs that can take minutes)."""
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class ApiKeyMiddleware:
    """Refuses ``/v1/`` requests without the right bearer key before anything else is read."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = bad_api_key()
                await JSONResponse(error.body(), error.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def sse(payload: dict | str) -> str:
    """One server-sent event."""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


def create_app(engine: Engine, api_key: str | None = None, max_sessions: int = 8, queue_timeout: float = 60.0,
               token_timeout: float = 300.0, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The API application for ``engine`` (run it with uvicorn); ``on_ready`` is called once it serves."""
    runner = Runner(engine, max_sessions, queue_timeout, token_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            runner.shutdown()

    app = FastAPI(title="Blossom OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.runner = runner
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    _add_error_handlers(app)
    created = now()

    def check_model(requested: str) -> None:
        if requested != engine.model_id:
            raise unknown_model(requested, engine.model_id)

    @app.get("/health")
    async def health() -> JSONResponse:
        missing = await run_in_threadpool(engine.uncovered_blocks)
        body = {"status": "ok" if not missing else "missing_blocks", "model": engine.model_id,
                "uncovered_blocks": missing, "running": runner.running}
        return JSONResponse(body, 200 if not missing else 503)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card(engine.model_id, created)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        check_model(model_id)
        return model_card(engine.model_id, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)
        prompt = engine.chat_prompt([(message.role, message.text()) for message in body.messages])
        job = engine.job(prompt, body.token_limit, DEFAULT_CHAT_MAX_TOKENS, body.temperature, body.top_p,
                         body.stop_strings, body.seed)
        run = await runner.start(job)
        answer = Envelope(new_id("chatcmpl"), "chat.completion", "chat.completion.chunk", engine.model_id)
        if not body.stream:
            result = await wait_or_cancel(run, request.receive)
            return answer.whole({"message": {"role": "assistant", "content": result.text}}, result)

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return answer.chunk({"delta": delta}, finish_reason, body.include_usage)

        return await _stream(run, job, body.include_usage, lambda text: chunk({"content": text}),
                             lambda result: chunk({}, result.finish_reason), answer.usage_chunk,
                             opening=chunk({"role": "assistant", "content": ""}))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        prompt = engine.text_prompt(body.prompt_text)
        job = engine.job(prompt, body.token_limit, DEFAULT_COMPLETION_MAX_TOKENS, body.temperature, body.top_p,
                         body.stop_strings, body.seed)
        run = await runner.start(job)
        answer = Envelope(new_id("cmpl"), "text_completion", "text_completion", engine.model_id)
        if not body.stream:
            result = await wait_or_cancel(run, request.receive)
            return answer.whole({"text": result.text}, result)

        def chunk(text: str, finish_reason: str | None = None) -> dict:
            return answer.chunk({"text": text}, finish_reason, body.include_usage)

        return await _stream(run, job, body.include_usage, chunk, lambda result: chunk("", result.finish_reason),
                             answer.usage_chunk)

    return app


async def _stream(run: Run, job: GenerationJob, include_usage: bool, text_chunk: Callable[[str], dict],
                  final_chunk: Callable[[GenerationResult], dict], usage_chunk: Callable[[dict], dict],
                  opening: dict | None = None) -> EventStreamResponse:
    """The SSE answer of a streaming request: [opening], a chunk per text piece, the finish chunk, [usage],
    ``[DONE]``. Waits for the first event so that errors before any text keep their HTTP status."""
    try:
        first = await first_event(run)
    except BaseException:
        run.cancelled.set()
        raise

    async def events() -> AsyncIterator[str]:
        if opening is not None:
            yield sse(opening)
        kind, value = first
        while True:
            if kind == "text":
                yield sse(text_chunk(value))
            elif kind == "done":
                assert isinstance(value, GenerationResult)
                yield sse(final_chunk(value))
                if include_usage:
                    yield sse(usage_chunk(usage(value.prompt_tokens, value.completion_tokens)))
                yield sse("[DONE]")
                return
            else:  # an error after the answer began: OpenAI's clients raise on an event carrying "error"
                assert isinstance(value, BaseException)
                yield sse(_as_api_error(value).body())
                return
            kind, value = await run.next_merged()

    return EventStreamResponse(events(), on_close=run.cancelled.set)


def _as_api_error(error: BaseException) -> ApiError:
    if isinstance(error, ApiError):
        return error
    if isinstance(error, BlossomError):
        return from_blossom_error(error)
    logger.error("Unexpected error while answering a request", exc_info=error)
    return ApiError(500, f"internal error: {type(error).__name__}: {error}", "server_error", "internal_error")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's format."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), error.status)

    @app.exception_handler(BlossomError)
    async def blossom_error(request: Request, error: BlossomError) -> JSONResponse:
        answer = from_blossom_error(error)
        return JSONResponse(answer.body(), answer.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            answer = ApiError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}; "
                                   f"send a JSON object", code="invalid_json")
        else:
            location = [str(part) for part in first.get("loc", ()) if part != "body"]
            param = ".".join(location) or None
            reason = first.get("msg", "invalid value").removeprefix("Value error, ")
            answer = ApiError(400, f"{param + ': ' if param else ''}{reason}", code="invalid_value", param=param)
        return JSONResponse(answer.body(), answer.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if error.status_code == 404 else "http_error"
        message = (f"no route {request.method} {request.url.path}; this API offers GET /v1/models, "
                   f"POST /v1/chat/completions, POST /v1/completions and GET /health"
                   if error.status_code in (404, 405) else str(error.detail))
        answer = ApiError(error.status_code, message, "invalid_request_error", kind)
        return JSONResponse(answer.body(), answer.status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        answer = _as_api_error(error)
        return JSONResponse(answer.body(), answer.status)
