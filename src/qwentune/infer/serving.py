"""The server's chat logic: an OpenAI request becomes prompts, generation on the worker, and a response.

Routes (qwentune.infer.server) call only this; request and response shapes live in
qwentune.infer.openai_api and qwentune.infer.openai_responses. Two rules hold for every request:

- CPU work stays off the event loop: prompts are tokenized on a thread (a 5 MB prompt takes
  seconds to tokenize, and meanwhile the loop must answer /health and other clients).
- A request whose client goes away, streamed or not, is abandoned: skipped while it waits,
  stopped at its next token while it generates (`ClientWatch`).

A chat reply is read by the prompt's `ReplyParser` (qwentune.infer.reply), streamed or not: its
think block becomes `reasoning_content`, its `<tool_call>` blocks `tool_calls` (streamed as
OpenAI streams them: a delta with the call's id and name, then one with its arguments), and a
call that does not parse stays in `content` as the model wrote it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TypeVar

from pydantic import BaseModel

from qwentune.data.toolcalls import ToolCallError
from qwentune.infer.decoding import Completion
from qwentune.infer.engine import Prompt
from qwentune.infer.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    FunctionCall,
    OpenAIError,
    SamplingRequest,
    ToolCall,
)
from qwentune.infer.openai_responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    CompletionChoice,
    FunctionDelta,
    ModelCard,
    TextCompletion,
    ToolCallDelta,
    Usage,
)
from qwentune.infer.reply import Delta, Reply, final_reason
from qwentune.infer.settings import GenerationSettings
from qwentune.infer.worker import GenerationWorker, Job, WorkerClosed

T = TypeVar("T")
ClientGone = Callable[[], Awaitable[None]]  # returns once the client has disconnected

SHUTTING_DOWN = "the server is shutting down; send the request again once it is back"


def _failure(exc: Exception) -> OpenAIError:
    if isinstance(exc, WorkerClosed):
        return OpenAIError(503, SHUTTING_DOWN)
    return OpenAIError(500, f"generation failed: {exc}")


class Answers:
    """Requests handed to the worker thread; their text pieces and results arrive here as events."""

    def __init__(self, worker: GenerationWorker, engine, prompts: list[list[int]], settings: GenerationSettings):
        loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        self._finished: set[int] = set()

        def post(*event) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(self._events.put_nowait, event)

        self.requests = [
            engine.request(ids, settings, on_text=partial(post, i, "text"), on_finish=partial(post, i, "finish"))
            for i, ids in enumerate(prompts)
        ]
        try:
            for i, request in enumerate(self.requests):
                worker.submit(Job(request, settings.sampling, on_error=partial(post, i, "error")))
        except WorkerClosed as exc:
            self.abandon()
            raise _failure(exc) from None

    async def events(self) -> AsyncIterator[tuple[int, str, str | Completion]]:
        """(index, "text", piece) and (index, "finish", Completion) until every request is done."""
        while len(self._finished) < len(self.requests):
            index, kind, value = await self._events.get()
            if kind == "error":
                raise _failure(value)
            if kind == "finish":
                self._finished.add(index)
            yield index, kind, value

    async def completions(self) -> list[Completion]:
        results: list[Completion | None] = [None] * len(self.requests)
        async for index, kind, value in self.events():
            if kind == "finish":
                results[index] = value
        return results

    def abandon(self) -> None:
        """Stop generating what is not finished: nobody will read it."""
        for index, request in enumerate(self.requests):
            if index not in self._finished:
                request.abandon()


class ClientWatch:
    """Abandons `answers` as soon as the client disconnects (while the response is being made)."""

    def __init__(self, answers: Answers, client_gone: ClientGone):
        self.answers = answers
        self._task = asyncio.ensure_future(client_gone())
        self._task.add_done_callback(lambda task: task.cancelled() or answers.abandon())

    async def result(self, work: Awaitable[T]) -> T:
        """`work`'s result, or OpenAIError 499 (nobody reads it) when the client leaves first."""
        work = asyncio.ensure_future(work)
        try:
            await asyncio.wait({work, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.close()
            if not work.done():
                work.cancel()
        if work.done() and not work.cancelled():
            return work.result()
        raise OpenAIError(499, "the client closed the connection before the answer was ready")

    def close(self) -> None:
        """The response is done (or abandoned): stop watching and stop generating what is left."""
        self._task.cancel()
        self.answers.abandon()


def token_budget(prompt_tokens: int, requested: int | None, default: int, context: int,
                 param: str = "max_tokens") -> int:  # fmt: skip
    """New tokens a request may generate; OpenAIError when prompt and answer exceed the context.

    `param`: the field that asked for `requested` tokens (max_tokens or max_completion_tokens).
    """
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
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in the completion: "
            f"'{param}'). Please reduce the length of the messages or completion.",
            param=param,
            code="context_length_exceeded",
        )
    return requested


def sse(data: BaseModel | dict | str) -> str:
    """One server-sent event."""
    if isinstance(data, BaseModel):
        data = data.model_dump()
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def usage(completions: list[Completion]) -> Usage:
    return Usage.of(sum(c.prompt_tokens for c in completions), sum(c.completion_tokens for c in completions))


def assistant_message(reply: Reply) -> AssistantMessage:
    calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in reply.tool_calls]
    return AssistantMessage(
        content=reply.content if reply.content or not calls else None,  # null beside calls, as OpenAI's
        reasoning_content=reply.reasoning_content,
        tool_calls=calls or None,
    )


def chat_deltas(delta: Delta, call_index: int) -> list[ChatDelta]:
    """The streamed deltas of one piece of a reply (`call_index`: the call's place among the reply's calls)."""
    if delta.kind == "reasoning":
        return [ChatDelta(reasoning_content=delta.text)]
    if delta.kind == "content":
        return [ChatDelta(content=delta.text)]
    call = delta.tool_call
    head = ToolCallDelta(index=call_index, id=call.id, type="function", function=FunctionDelta(name=call.name, arguments=""))
    arguments = ToolCallDelta(index=call_index, function=FunctionDelta(arguments=call.arguments))
    return [ChatDelta(tool_calls=[head]), ChatDelta(tool_calls=[arguments])]


class Service:
    """What the routes share: the engine, its worker, the served name, the key and the limits."""

    def __init__(
        self,
        engine,
        *,
        model_name: str,
        api_key: str | None,
        max_batch_size: int,
        default_max_tokens: int,
        max_prompts: int,
    ):
        self.engine = engine
        self.worker = GenerationWorker(engine, max_batch_size=max_batch_size)
        self.model_name = model_name
        self.api_key = api_key
        self.default_max_tokens = default_max_tokens
        self.max_prompts = max_prompts
        self.created = int(time.time())
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.worker.start()

    def stop_soon(self) -> None:
        """From a signal handler: fail what is in flight (503) so the connections close and the server can exit."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.worker.stop)

    async def close(self) -> None:
        await asyncio.to_thread(self.worker.close)

    # ------------------------------------------------------------ checks

    def key_problem(self, authorization: str) -> OpenAIError | None:
        """Why a request with this Authorization header may not use the API (None when it may)."""
        if self.api_key is None:
            return None
        scheme, _, given = authorization.partition(" ")
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
        budgets = [
            token_budget(len(ids), body.requested_tokens, self.default_max_tokens, context, body.tokens_field)
            for ids in prompts
        ]
        # Each prompt gets at most its own room (engine.request caps it); they share the requested number.
        return body.settings(max(budgets))

    def model_card(self) -> ModelCard:
        return ModelCard(id=self.model_name, created=self.created)

    def health(self) -> dict:
        info = self.engine.info
        return {"status": "ok", "model": self.model_name, "device": info["device"], "dtype": info["dtype"],
                **self.worker.stats()}  # fmt: skip

    # ------------------------------------------------------------ requests

    def _head(self, prefix: str) -> dict:
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_name}

    async def _start(self, body: SamplingRequest, prepare: Callable[[], list[Prompt]]) -> tuple[Answers, list[Prompt]]:
        self.check_model(body.model)
        try:
            prompts = await asyncio.to_thread(prepare)
        except ToolCallError as exc:  # a definition or an assistant turn's call the template cannot render
            raise OpenAIError(400, str(exc), param="tools" if exc.reason == "bad_tools" else "messages") from None
        ids = [prompt.ids for prompt in prompts]
        return Answers(self.worker, self.engine, ids, self.settings_for(body, ids)), prompts

    async def chat(self, body: ChatCompletionRequest, client_gone: ClientGone) -> ChatCompletion | AsyncIterator[str]:
        """The answer, or with "stream": true the server-sent events that make it up."""
        conversation, options = body.conversation(), body.prompt_options()
        answers, (prompt,) = await self._start(body, lambda: [self.engine.prepare(conversation, **options)])
        watch = ClientWatch(answers, client_gone)
        head = self._head("chatcmpl")
        if body.stream:
            return self._chat_events(watch, body, head, prompt)
        (completion,) = await watch.result(answers.completions())
        reply = prompt.reply(completion)
        choice = ChatChoice(index=0, message=assistant_message(reply), finish_reason=reply.finish_reason)
        return ChatCompletion(**head, choices=[choice], usage=usage([completion]))

    async def complete(self, body: CompletionRequest, client_gone: ClientGone) -> TextCompletion | AsyncIterator[str]:
        texts = body.prompts
        if len(texts) > self.max_prompts:
            raise OpenAIError(400, f"'prompt' holds {len(texts)} prompts; this server takes at most "
                                   f"{self.max_prompts} in one request", param="prompt")  # fmt: skip
        tokenizer = self.engine.tokenizer
        answers, _ = await self._start(body, lambda: [Prompt(tokenizer(text)["input_ids"]) for text in texts])
        watch = ClientWatch(answers, client_gone)
        head = self._head("cmpl")
        if body.stream:
            return self._completion_events(watch, body, head)
        results = await watch.result(answers.completions())
        choices = [CompletionChoice(index=i, text=c.text, finish_reason=c.finish_reason) for i, c in enumerate(results)]
        return TextCompletion(**head, choices=choices, usage=usage(results))

    async def _chat_events(
        self, watch: ClientWatch, body: ChatCompletionRequest, head: dict, prompt: Prompt
    ) -> AsyncIterator[str]:
        def chunk(delta: ChatDelta, finish_reason: str | None = None) -> str:
            return sse(ChatCompletionChunk(**head, choices=[ChatChunkChoice(delta=delta, finish_reason=finish_reason)]))

        parser, calls = prompt.parser(), 0

        def chunks(deltas: list[Delta]) -> list[str]:
            nonlocal calls
            events = []
            for delta in deltas:
                events += [chunk(d) for d in chat_deltas(delta, calls)]
                calls += delta.kind == "tool_call"
            return events

        try:
            yield chunk(ChatDelta(role="assistant", content=""))
            for event in chunks(parser.feed(prompt.prefill)):
                yield event
            completions = []
            async for _, kind, value in watch.answers.events():
                if kind == "text":
                    for event in chunks(parser.feed(value)):
                        yield event
                else:
                    for event in chunks(parser.close()):
                        yield event
                    completions.append(value)
                    yield chunk(ChatDelta(), final_reason(value.finish_reason, calls > 0))
            if body.include_usage:
                yield sse(ChatCompletionChunk(**head, choices=[], usage=usage(completions)))
        except OpenAIError as exc:  # the status line is sent already: report it in the stream, as OpenAI does
            yield sse(exc.body())
        finally:
            watch.close()  # stops generating for a client that went away (a no-op once all are done)
        yield sse("[DONE]")

    async def _completion_events(self, watch: ClientWatch, body: CompletionRequest, head: dict) -> AsyncIterator[str]:
        def chunk(index: int, text: str, finish_reason: str | None = None) -> str:
            choice = CompletionChoice(index=index, text=text, finish_reason=finish_reason)
            return sse(TextCompletion(**head, choices=[choice]))

        try:
            completions = []
            async for index, kind, value in watch.answers.events():
                if kind == "text":
                    yield chunk(index, value)
                else:
                    completions.append(value)
                    yield chunk(index, "", value.finish_reason)
            if body.include_usage:
                yield sse(TextCompletion(**head, choices=[], usage=usage(completions)))
        except OpenAIError as exc:
            yield sse(exc.body())
        finally:
            watch.close()
        yield sse("[DONE]")
