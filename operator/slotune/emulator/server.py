"""The emulated model server: vLLM's OpenAI-compatible HTTP API over a real-time simulated engine.

Endpoints, as ``vllm serve`` has them: ``/v1/completions`` and ``/v1/chat/completions``
(streaming over SSE or not), ``/v1/models``, ``/health`` and ``/ping`` (503 while the model
"loads"), ``/version``, ``/load`` and ``/metrics`` (vLLM's names, labels and buckets, from the
simulator's :class:`VllmMetrics`). One more, ``/emulator``, says how this server was started
(its flags and performance profile), so tests can check which batch limits a pod runs with.

A request costs what the simulated GPU says: its prompt length comes from the prompt text
(about four characters a token, plus a few tokens per chat message for the template) or from
an ``x-slotune-prompt-tokens`` header, and it generates exactly ``max_tokens`` tokens (as with
``ignore_eos``), so its finish reason is ``length``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from slotune import __version__
from slotune.emulator.realtime import RealtimeEngine, RejectedError, Stream
from slotune.sim.engine import Engine
from slotune.sim.profiles import get_profile
from slotune.sim.vllm_metrics import VllmMetrics, histogram_buckets

PROMPT_TOKENS_HEADER = "x-slotune-prompt-tokens"
CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 4  # role markers of the chat template
DEFAULT_COMPLETION_TOKENS = 16  # the OpenAI completions default
DEFAULT_CHAT_TOKENS = 256
VLLM_VERSION = "0.11.0"

_WORDS = (" the", " model", " says", " hello", " to", " you", " and", " then", " it", " waits")


def _text(start: int, count: int) -> str:
    return "".join(_WORDS[(start + i) % len(_WORDS)] for i in range(count))


@dataclass(frozen=True)
class EmulatorConfig:
    """How the server was started: the vLLM flags it honours and the emulator's own."""

    model: str
    served_model_names: tuple[str, ...]
    model_profile: str = "llama-3-8b-h100"
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    custom_histogram_buckets: Mapping[str, Sequence[float]] | None = None
    startup_delay_s: float = 0.0
    stream_interval_s: float = 0.25
    drain_timeout_s: float = 30.0
    ignored_flags: tuple[str, ...] = ()
    argv: tuple[str, ...] = field(default=())

    def served_name(self) -> str:
        return self.served_model_names[0] if self.served_model_names else self.model


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _error_response(error: ApiError) -> web.Response:
    body = {
        "error": {"message": str(error), "type": error.kind, "param": None, "code": error.status}
    }
    return web.json_response(body, status=error.status)


def _prompt_tokens_of(value: Any) -> int:
    """Tokens in a completions ``prompt``: text, a list of texts, or token ids."""
    if isinstance(value, str):
        return math.ceil(len(value) / CHARS_PER_TOKEN)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(_prompt_tokens_of(v) for v in value)
    raise ApiError(400, "prompt must be a string, a list of strings or a list of token ids")


def _message_chars(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    raise ApiError(400, "message content must be a string or a list of parts")


def _positive_int(body: Mapping[str, Any], *keys: str, default: int) -> int:
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ApiError(400, f"{key} must be a positive integer, got {value!r}")
        return value
    return default


class EmulatorServer:
    """The aiohttp application around one :class:`RealtimeEngine`."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        buckets = histogram_buckets(config.custom_histogram_buckets)
        self.metrics = VllmMetrics(buckets=buckets)
        engine = Engine(
            get_profile(config.model_profile),
            config.max_num_seqs,
            config.max_num_batched_tokens,
            max_model_len=config.max_model_len,
            metrics=self.metrics,
            record_token_events=True,
        )
        self.engine = engine
        self.driver = RealtimeEngine(engine, stream_interval_s=config.stream_interval_s)
        self.started_at = time.time()
        self._loaded_at = time.monotonic() + config.startup_delay_s
        self.draining = False
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/ping", self.health),
                web.get("/version", self.version),
                web.get("/load", self.load),
                web.get("/metrics", self.metrics_endpoint),
                web.get("/emulator", self.describe),
                web.get("/v1/models", self.models),
                web.post("/v1/completions", self.completions),
                web.post("/v1/chat/completions", self.chat_completions),
            ]
        )

    @property
    def loaded(self) -> bool:
        return time.monotonic() >= self._loaded_at

    # -- plain endpoints -------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if not self.loaded:
            return web.Response(status=503, text="model loading")
        if self.draining:
            return web.Response(status=503, text="shutting down")
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VLLM_VERSION})

    async def load(self, request: web.Request) -> web.Response:
        return web.json_response({"server_load": self.driver.outstanding})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        self.driver.advance(self.driver.now())
        text = self.metrics.render(self.config.served_name())
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def describe(self, request: web.Request) -> web.Response:
        config = asdict(self.config)
        config["served_model_names"] = list(self.config.served_model_names)
        return web.json_response(
            {
                "emulator": f"slotune {__version__}",
                "config": config,
                "loaded": self.loaded,
                "started_at": self.started_at,
                "kv_cache_blocks": self.engine.total_blocks,
                "max_model_len": self.engine.max_model_len,
                "submitted": self.driver.submitted,
                "outstanding": self.driver.outstanding,
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        created = int(self.started_at)
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": self.config.model,
                "parent": None,
                "max_model_len": self.engine.max_model_len,
            }
            for name in self.config.served_model_names or (self.config.model,)
        ]
        return web.json_response({"object": "list", "data": data})

    # -- generation ------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            if not self.loaded or self.draining:
                raise ApiError(503, "the model is not ready", "ServiceUnavailableError")
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ApiError(400, "the request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise ApiError(400, "the request body must be a JSON object")
            model = body.get("model") or self.config.served_name()
            names = self.config.served_model_names or (self.config.model,)
            if model not in names:
                raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
            if body.get("n", 1) != 1:
                raise ApiError(400, "the emulator serves n=1 only")
            prompt_tokens = self._prompt_tokens(request, body, chat=chat)
            if chat:
                output = _positive_int(
                    body, "max_completion_tokens", "max_tokens", default=DEFAULT_CHAT_TOKENS
                )
            else:
                output = _positive_int(body, "max_tokens", default=DEFAULT_COMPLETION_TOKENS)
            try:
                stream = self.driver.submit(prompt_tokens, output, "length")
            except RejectedError as error:
                raise ApiError(400, str(error)) from None
        except ApiError as error:
            return _error_response(error)
        reply = _Reply(model=str(model), chat=chat, prompt_tokens=prompt_tokens)
        try:
            if body.get("stream"):
                options = body.get("stream_options") or {}
                usage = bool(isinstance(options, dict) and options.get("include_usage"))
                return await self._stream(request, stream, reply, usage)
            while not stream.done:
                await stream.changed.wait()
                stream.changed.clear()
            return web.json_response(reply.whole(stream.tokens))
        finally:
            self.driver.forget(stream)

    def _prompt_tokens(self, request: web.Request, body: Mapping[str, Any], *, chat: bool) -> int:
        hint = request.headers.get(PROMPT_TOKENS_HEADER)
        if hint is not None:
            try:
                tokens = int(hint)
            except ValueError:
                raise ApiError(400, f"{PROMPT_TOKENS_HEADER} must be an integer") from None
        elif chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ApiError(400, "messages must be a non-empty list")
            chars = sum(_message_chars(m.get("content")) for m in messages if isinstance(m, dict))
            tokens = math.ceil(chars / CHARS_PER_TOKEN) + CHAT_TOKENS_PER_MESSAGE * len(messages)
        else:
            if "prompt" not in body:
                raise ApiError(400, "prompt is required")
            tokens = _prompt_tokens_of(body["prompt"])
        return max(1, tokens)

    async def _stream(
        self, request: web.Request, stream: Stream, reply: _Reply, usage: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        sent = 0
        while True:
            await stream.changed.wait()
            stream.changed.clear()
            tokens = stream.tokens
            if tokens > sent or stream.done:
                chunk = reply.chunk(sent, tokens - sent, done=stream.done, first=sent == 0)
                await response.write(_sse(chunk))
                sent = tokens
            if stream.done:
                break
        if usage:
            await response.write(_sse(reply.usage_chunk(sent)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class _Reply:
    """Builds the OpenAI response objects for one request."""

    model: str
    chat: bool
    prompt_tokens: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self) -> dict[str, Any]:
        prefix, kind = ("chatcmpl", "chat.completion") if self.chat else ("cmpl", "text_completion")
        return {"id": f"{prefix}-{self.id}", "object": kind, "created": self.created}

    def _usage(self, tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + tokens,
            "completion_tokens": tokens,
        }

    def whole(self, tokens: int) -> dict[str, Any]:
        text = _text(0, tokens)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "length"}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice["stop_reason"] = None
        return {
            **self._head(),
            "model": self.model,
            "choices": [choice],
            "usage": self._usage(tokens),
        }

    def chunk(self, start: int, count: int, *, done: bool, first: bool) -> dict[str, Any]:
        text = _text(start, count)
        choice: dict[str, Any] = {"index": 0, "logprobs": None}
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
            kind = "chat.completion.chunk"
        else:
            choice["text"] = text
            kind = "text_completion"
        choice["finish_reason"] = "length" if done else None
        choice["stop_reason"] = None
        return {**self._head(), "object": kind, "model": self.model, "choices": [choice]}

    def usage_chunk(self, tokens: int) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {
            **self._head(),
            "object": kind,
            "model": self.model,
            "choices": [],
            "usage": self._usage(tokens),
        }


async def serve(config: EmulatorConfig, host: str, port: int) -> None:
    """Run until SIGTERM or SIGINT; then refuse new work and let open requests finish (at most
    ``drain_timeout_s``), as a pod does in its termination grace period."""
    import signal

    server = EmulatorServer(config)
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=512)
    await site.start()
    print(
        f"slotune emulator: {config.served_name()} on http://{host}:{port} "
        f"(profile {config.model_profile}, max-num-seqs {config.max_num_seqs}, "
        f"max-num-batched-tokens {config.max_num_batched_tokens}, "
        f"ready in {config.startup_delay_s:g}s)",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.draining = True
    deadline = time.monotonic() + config.drain_timeout_s
    while server.driver.outstanding and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    server.driver.close()
    await runner.cleanup()
