"""`qwentune serve`: an OpenAI-compatible HTTP server for a trained model (FastAPI + uvicorn).

    qwentune serve --model_path ./results/checkpoints [--host 127.0.0.1 --port 8000 --api_key KEY]

Endpoints: POST /v1/chat/completions and /v1/completions (streamed as server-sent events with
"stream": true), GET /v1/models, GET /health (no key needed). Errors use OpenAI's shape.
Without a temperature a request is answered greedily (deterministic), unlike OpenAI's default of 1.

The server is three modules, as LLaMA-Factory's api: this one (routes, HTTP checks),
`openai_api` + `openai_responses` (the protocol: typed requests and responses) and `serving` (the chat logic:
prompts, the generation worker, responses). Its command line is `serve_cli`, which `--help`
reads without importing fastapi or torch.
"""

from __future__ import annotations

import math
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwentune.infer.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    field_path,
)
from qwentune.infer.openai_responses import ModelList
from qwentune.infer.serving import Service
from qwentune.infer.settings import DEFAULT_MAX_BODY_MB, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_PROMPTS

GRACEFUL_SHUTDOWN_S = 5  # after SIGTERM/SIGINT, the most time given to responses still being sent


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    error = exc.errors()[0]
    if error["type"] == "json_invalid":
        return OpenAIError(400, "We could not parse the JSON body of your request: it is not valid JSON.")
    # Our own checks name their field in ctx["param"]; pydantic's are located by error["loc"].
    param = (error.get("ctx") or {}).get("param")
    path = field_path(error["loc"])
    param = ".".join(part for part in (path, param) if part) if param else path
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = f"'{param}' is a required property" if param else "the request needs a JSON object body"
    elif error["type"] in ("model_attributes_type", "model_type") and tuple(error["loc"]) == ("body",):
        # a list, a string, or a body not sent as JSON
        message = "the request body must be a JSON object, sent with 'Content-Type: application/json'"
    elif isinstance(error.get("input"), float) and not math.isfinite(error["input"]):
        message = f"{param}: must be a finite number (got {error['input']!r})"  # not "≤ 2" for a NaN
    elif param and not message.startswith(("'", "a '")):
        message = f"{param}: {message}"
    return OpenAIError(400, message, param=param)


def _error_response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class RequestGate:
    """Checks each HTTP request before the app sees its body: the API key (/v1/ paths), then the body size.

    Plain ASGI rather than FastAPI's @middleware, which wraps `receive` and hides a client's
    disconnect from the routes. A body over the limit is refused with 413 before it is parsed.
    """

    def __init__(self, app: ASGIApp, service: Service, max_body_bytes: int):
        self.app, self.service, self.max_body_bytes = app, service, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        # The key is checked before the body is read: a client without it learns nothing about requests.
        problem = self.service.key_problem(headers.get("authorization", "")) if scope["path"].startswith("/v1/") else None
        if problem is None:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                problem = self._too_large()
        if problem is not None:
            return await _error_response(problem)(scope, receive, send)
        body, more = [], True
        received = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message.get("body", b""))
            received += len(body[-1])
            more = message.get("more_body", False)
            if received > self.max_body_bytes:
                return await _error_response(self._too_large())(scope, receive, send)
        return await self.app(scope, _replay(b"".join(body), receive), send)

    def _too_large(self) -> OpenAIError:
        limit = self.max_body_bytes / 1e6
        return OpenAIError(413, f"The request body is larger than this server's limit of {limit:g} MB "
                                "(qwentune serve --max_body_mb).", code="request_too_large")  # fmt: skip


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the body already read, then the connection's own messages (its disconnect)."""
    first = True

    async def replayed() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def create_app(
    engine,
    *,
    model_name: str,
    api_key: str | None = None,
    max_batch_size: int = 8,
    default_max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
) -> FastAPI:
    service = Service(engine, model_name=model_name, api_key=api_key, max_batch_size=max_batch_size,
                      default_max_tokens=default_max_tokens, max_prompts=max_prompts)  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await service.close()

    app = FastAPI(title="qwentune", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(RequestGate, service=service, max_body_bytes=int(max_body_mb * 1e6))

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error_response(OpenAIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Still logged with its traceback by uvicorn; the client gets the error in the shape it expects.
        return _error_response(OpenAIError(500, f"internal server error: {type(exc).__name__}: {exc}"))

    def client_gone(request: Request):
        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        return disconnected

    def respond(answer):
        if isinstance(answer, dict) or hasattr(answer, "model_dump"):
            return answer
        return StreamingResponse(answer, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> dict:
        return service.health()

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[service.model_card()])

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        service.check_model(model_id)
        return service.model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return respond(await service.chat(body, client_gone(request)))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return respond(await service.complete(body, client_gone(request)))

    return app


class StoppingServer(uvicorn.Server):
    """uvicorn's server, whose SIGTERM/SIGINT also stops generation at once.

    uvicorn alone waits for the responses in flight, and an answer of thousands of tokens can
    take minutes: those requests get 503 now, and the batch stops at its next token.
    """

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame) -> None:
        self.service.stop_soon()
        super().handle_exit(sig, frame)


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run `app` (from create_app) until SIGTERM/SIGINT, which end it within a few seconds."""
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    StoppingServer(config, app.state.service).run()

