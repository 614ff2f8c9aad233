"""`qwentune serve`: an OpenAI-compatible HTTP server for a trained model (FastAPI + uvicorn).

    qwentune serve --model_path ./results/checkpoints [--host 127.0.0.1 --port 8000 --api_key KEY]

Endpoints: POST /v1/chat/completions and /v1/completions (streamed as server-sent events with
"stream": true), GET /v1/models, GET /health (no key needed). Errors use OpenAI's shape.
Requests go to one generation worker (qwentune.infer.worker), which batches concurrent requests.
Without a temperature a request is answered greedily (deterministic), unlike OpenAI's default of 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from qwentune.console import console, notice
from qwentune.infer.decoding import Completion
from qwentune.infer.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    SamplingRequest,
    field_path,
)
from qwentune.infer.settings import DEFAULT_MAX_NEW_TOKENS, GenerationSettings
from qwentune.infer.worker import GenerationWorker, Job

API_KEY_ENV = "QWENTUNE_API_KEY"


# ---------------------------------------------------------------- answers, seen from the event loop


class Answers:
    """Requests handed to the worker thread; their text pieces and results arrive here as events."""

    def __init__(self, worker: GenerationWorker, engine, prompts: list[list[int]], settings: GenerationSettings):
        loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()

        def post(*event) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(self._events.put_nowait, event)

        self.requests = [
            engine.request(ids, settings, on_text=partial(post, i, "text"), on_finish=partial(post, i, "finish"))
            for i, ids in enumerate(prompts)
        ]
        for i, request in enumerate(self.requests):
            worker.submit(Job(request, settings.sampling, on_error=partial(post, i, "error")))

    async def events(self) -> AsyncIterator[tuple[int, str, str | Completion]]:
        """(index, "text", piece) and (index, "finish", Completion) until every request is done."""
        unfinished = len(self.requests)
        while unfinished:
            index, kind, value = await self._events.get()
            if kind == "error":
                raise OpenAIError(500, f"generation failed: {value}")
            if kind == "finish":
                unfinished -= 1
            yield index, kind, value

    async def completions(self) -> list[Completion]:
        results: list[Completion | None] = [None] * len(self.requests)
        async for index, kind, value in self.events():
            if kind == "finish":
                results[index] = value
        return results

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel.set()


# ---------------------------------------------------------------- request checks


def token_budget(prompt_tokens: int, requested: int | None, default: int, context: int) -> int:
    """New tokens a request may generate; OpenAIError when prompt and answer exceed the context."""
    if requested is None:
        if prompt_tokens >= context:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {context} tokens. However, your messages resulted in "
                f"{prompt_tokens} tokens. Please reduce the length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        return min(default, context - prompt_tokens)
    if prompt_tokens + requested > context:
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    error = exc.errors()[0]
    if error["type"] == "json_invalid":
        return OpenAIError(400, "We could not parse the JSON body of your request: it is not valid JSON.")
    param = field_path(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = f"'{param}' is a required property" if param else "the request needs a JSON object body"
    elif param:
        message = f"{param}: {message}"
    return OpenAIError(400, message, param=param)


# ---------------------------------------------------------------- responses


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(completions: list[Completion]) -> dict:
    prompt = sum(c.prompt_tokens for c in completions)
    generated = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


class Server:
    """What the endpoints share: the engine, its worker, the served name and the key."""

    def __init__(self, engine, *, model_name: str, api_key: str | None, max_batch_size: int, default_max_tokens: int):
        self.engine = engine
        self.worker = GenerationWorker(engine, max_batch_size=max_batch_size)
        self.model_name = model_name
        self.api_key = api_key
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())

    def key_problem(self, request: Request) -> OpenAIError | None:
        """Why the request may not use the API (None when it may)."""
        if self.api_key is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return OpenAIError(401, "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.")
        if not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            return OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise OpenAIError(404, f"The model '{name}' does not exist; this server serves '{self.model_name}'.",
                              param="model", code="model_not_found")  # fmt: skip

    def settings_for(self, body: SamplingRequest, prompts: list[list[int]]) -> GenerationSettings:
        context = self.engine.context_length
        budgets = [token_budget(len(ids), body.requested_tokens, self.default_max_tokens, context) for ids in prompts]
        # Each prompt gets at most its own room (engine.request caps it); they share the requested number.
        return body.settings(max(budgets))

    def answers(self, prompts: list[list[int]], settings: GenerationSettings) -> Answers:
        return Answers(self.worker, self.engine, prompts, settings)

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "qwentune"}


async def _chat_chunks(answers: Answers, body: ChatCompletionRequest, head: dict) -> AsyncIterator[str]:
    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        return _sse(
            {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        )

    try:
        yield chunk({"role": "assistant", "content": ""})
        completions = []
        async for _, kind, value in answers.events():
            if kind == "text":
                yield chunk({"content": value})
            else:
                completions.append(value)
                yield chunk({}, value.finish_reason)
        if body.include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(completions)})
    except OpenAIError as exc:  # the status line is sent already: report it in the stream, as OpenAI does
        yield _sse(exc.body())
    finally:
        answers.cancel()  # stops generating for a client that went away (a no-op once all are done)
    yield _sse("[DONE]")


async def _completion_chunks(answers: Answers, body: CompletionRequest, head: dict) -> AsyncIterator[str]:
    def chunk(index: int, text: str, finish_reason: str | None = None) -> str:
        return _sse(
            {**head, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
        )

    try:
        completions = []
        async for index, kind, value in answers.events():
            if kind == "text":
                yield chunk(index, value)
            else:
                completions.append(value)
                yield chunk(index, "", value.finish_reason)
        if body.include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(completions)})
    except OpenAIError as exc:
        yield _sse(exc.body())
    finally:
        answers.cancel()
    yield _sse("[DONE]")


def _stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def create_app(
    engine,
    *,
    model_name: str,
    api_key: str | None = None,
    max_batch_size: int = 8,
    default_max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> FastAPI:
    server = Server(engine, model_name=model_name, api_key=api_key, max_batch_size=max_batch_size,
                    default_max_tokens=default_max_tokens)  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.worker.start()
        yield
        await asyncio.to_thread(server.worker.close)

    app = FastAPI(title="qwentune", lifespan=lifespan)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        # Checked before the body is read, so a client without the key learns nothing about requests.
        problem = server.key_problem(request) if request.url.path.startswith("/v1/") else None
        if problem is not None:
            return JSONResponse(problem.body(), status_code=problem.status)
        return await call_next(request)

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await openai_error(request, _validation_error(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return await openai_error(
            request, OpenAIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Still logged with its traceback by uvicorn; the client gets the error in the shape it expects.
        return await openai_error(request, OpenAIError(500, f"internal server error: {type(exc).__name__}: {exc}"))

    @app.get("/health")
    async def health() -> dict:
        info = engine.info
        return {
            "status": "ok",
            "model": server.model_name,
            "device": info["device"],
            "dtype": info["dtype"],
            "waiting": server.worker.waiting,
        }

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        server.check_model(model_id)
        return server.model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        server.check_model(body.model)
        prompt = engine.prompt_ids([message.as_message() for message in body.messages])
        answers = server.answers([prompt], server.settings_for(body, [prompt]))
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_name}
        if body.stream:
            return _stream(_chat_chunks(answers, body, {**head, "object": "chat.completion.chunk"}))
        (completion,) = await answers.completions()
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": completion.text},
            "logprobs": None,
            "finish_reason": completion.finish_reason,
        }
        return {**head, "object": "chat.completion", "choices": [choice], "usage": _usage([completion])}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        server.check_model(body.model)
        prompts = [engine.tokenizer(text)["input_ids"] for text in body.prompts]
        answers = server.answers(prompts, server.settings_for(body, prompts))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_name}
        if body.stream:
            return _stream(_completion_chunks(answers, body, {**head, "object": "text_completion"}))
        results = await answers.completions()
        choices = [
            {"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
            for i, c in enumerate(results)
        ]
        return {**head, "object": "text_completion", "choices": choices, "usage": _usage(results)}

    return app


# ---------------------------------------------------------------- command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from qwentune.infer.cli import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 makes the server reachable from other machines)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api_key", default=None, help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set)"
    )
    parser.add_argument(
        "--served_model_name", default=None, help="the model id clients name (default: --model_path as given)"
    )
    parser.add_argument(
        "--max_batch_size", type=int, default=8, help="most concurrent requests generated as one batch (1: no batching)"
    )
    parser.add_argument(
        "--default_max_tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="new tokens for a request that sets no max_tokens",
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_cli(args: argparse.Namespace) -> int:
    import uvicorn

    from qwentune.infer.cli import load_engine

    if args.max_batch_size < 1 or args.default_max_tokens < 1:
        console.print("[red]error:[/red] --max_batch_size and --default_max_tokens must be >= 1")
        return 2
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    engine = load_engine(args)
    if engine is None:
        return 1
    name = args.served_model_name or args.model_path
    app = create_app(engine, model_name=name, api_key=api_key, max_batch_size=args.max_batch_size,
                     default_max_tokens=args.default_max_tokens)  # fmt: skip
    if not _is_loopback(args.host) and api_key is None:
        notice(f"binding {args.host} without an API key: anyone who can reach this machine can use the model")
    # The key itself is never printed or logged; uvicorn's access log shows method, path and status only.
    console.print(
        f"Serving [bold]{name}[/bold] ({engine.info['device']}, {engine.info['dtype']}) at http://{args.host}:{args.port}/v1"
        f" — API key {'required' if api_key else 'not required'}. Ctrl-C to stop."
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
