"""A local OpenAI-compatible HTTP server for tests (OpenAI is an external paid API: the one test double
the project allows). Speaks the REST shapes the official client uses:

- POST /v1/chat/completions -> a deterministic answer that quotes the last user message, with `usage`;
- POST /v1/embeddings -> deterministic unit vectors (1536 dimensions), with `usage`;
- POST /v1/audio/transcriptions (multipart) -> verbose_json: a transcript naming the recording, its
  duration (read from a WAV header) and one segment per started 5 seconds;
- POST /v1/images/generations -> `n` small PNGs (colour from the prompt), as b64_json.

Tests can read every request it received (`requests`) and make the next calls fail on demand
(`fail_next(status, count, retry_after=...)`: 429 with Retry-After, 500, ...).
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EMBEDDING_DIMENSION = 1536


def count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def answer_for(messages: list[dict[str, Any]]) -> str:
    last_user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    return f"You said: {last_user} (I saw {len(messages)} messages)"


def embedding_for(text: str) -> list[float]:
    seed = hashlib.sha256(text.encode()).digest()
    raw = [((seed[i % len(seed)] * (i + 1)) % 251) / 251.0 - 0.5 for i in range(EMBEDDING_DIMENSION)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []  # {"path", "body", "status"}
        self._failures: deque[tuple[int, float | None]] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- control, from tests ---
    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def reset(self) -> None:
        with self._lock:
            self._failures.clear()
            self.requests.clear()

    def calls(self, path: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if path is None or r["path"].endswith(path)]

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # --- server ---
    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # http.server calls it by this name
                length = int(self.headers.get("Content-Length") or 0)
                body = request_body(self.headers.get("Content-Type", ""), self.rfile.read(length))
                status, payload, headers = fake._answer(self.path, body, self.headers.get("Authorization", ""))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _answer(self, path: str, body: dict[str, Any], authorization: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
            status = failure[0] if failure else 200
            self.requests.append({"path": path, "body": body, "status": status, "at": time.time()})
        if not authorization.startswith("Bearer "):
            return 401, {"error": {"message": "no API key", "type": "invalid_request_error"}}, {}
        if failure is not None:
            status, retry_after = failure
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            return status, {"error": {"message": f"injected {status}", "type": kind, "code": kind}}, headers
        if path.endswith("/chat/completions") and getattr(self, "chat_script", None):
            return 200, scripted_completion(self, body), {}  # agents tests: the script's next answer
        if path.endswith("/chat/completions"):
            messages = body.get("messages", [])
            text = answer_for(messages)
            prompt_tokens = sum(count_tokens(m.get("content", "")) + 3 for m in messages)
            completion_tokens = count_tokens(text)
            return 200, {
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            }, {}
        if path.endswith("/embeddings"):
            texts = body.get("input", [])
            texts = [texts] if isinstance(texts, str) else texts
            tokens = sum(count_tokens(text) for text in texts)
            return 200, {
                "object": "list", "model": body.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": embedding_for(text)}
                         for i, text in enumerate(texts)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }, {}
        # --- speech and images (transcribe, image_generate) ---
        if path.endswith("/audio/transcriptions"):
            return transcription_answer(body)
        if path.endswith("/images/generations"):
            return images_answer(body)
        return 404, {"error": {"message": f"unknown path {path}", "type": "invalid_request_error"}}, {}


# --- speech and images: multipart bodies, transcriptions, image generations ---

def request_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """A JSON body, or a multipart form's fields (a file field becomes {"filename", "data"})."""
    if not content_type.startswith("multipart/form-data"):
        return json.loads(raw or b"{}")
    import email.parser
    import email.policy

    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        fields[name] = {"filename": filename, "data": payload} if filename is not None else payload.decode()
    return fields


def wav_seconds(data: bytes) -> float:
    """The duration of a PCM WAV recording from its header (byte rate at offset 28, data after 44 bytes)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) >= 44:
        byte_rate = int.from_bytes(data[28:32], "little")
        return round((len(data) - 44) / byte_rate, 3) if byte_rate else 0.0
    return round(len(data) / 16000, 3)


def transcription_answer(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    upload = body.get("file")
    if not isinstance(upload, dict) or not upload["data"]:
        return 400, {"error": {"message": "file is required", "type": "invalid_request_error"}}, {}
    data = upload["data"]
    duration = wav_seconds(data)
    digest = hashlib.sha256(data).hexdigest()[:8]
    text = f"Transcript of {upload['filename']} ({digest}), {duration:g} seconds."
    starts = [float(start) for start in range(0, max(1, math.ceil(duration)), 5)]
    segments = [{"id": i, "seek": 0, "start": start, "end": min(duration, start + 5.0),
                 "text": f" Segment {i} of {digest}.", "tokens": [], "temperature": 0.0,
                 "avg_logprob": -0.2, "compression_ratio": 1.0, "no_speech_prob": 0.01}
                for i, start in enumerate(starts)]
    language = {"de": "german", "fr": "french"}.get(body.get("language") or "", "english")
    if body.get("response_format") != "verbose_json":
        return 200, {"text": text}, {}
    return 200, {"task": "transcribe", "language": language, "duration": duration, "text": text,
                 "segments": segments}, {}


def images_answer(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    import base64
    import io

    from PIL import Image

    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return 400, {"error": {"message": "prompt is required", "type": "invalid_request_error"}}, {}
    model = body.get("model")
    if model == "gpt-image-1" and "response_format" in body:
        return 400, {"error": {"message": "Unknown parameter: 'response_format'.",
                               "type": "invalid_request_error"}}, {}
    data = []
    for index in range(int(body.get("n") or 1)):
        seed = hashlib.sha256(f"{prompt}|{index}".encode()).digest()
        out = io.BytesIO()
        Image.new("RGB", (32, 32), tuple(seed[:3])).save(out, "PNG")
        item: dict[str, Any] = {"b64_json": base64.b64encode(out.getvalue()).decode("ascii")}
        if model == "dall-e-3":
            item["revised_prompt"] = f"A picture of {prompt}"
        data.append(item)
    return 200, {"created": int(time.time()), "data": data}, {}
# --- scripted chat answers (agents): a test sets `fake.chat_script = ChatScript([...])` ---
# Each chat completion takes the script's next step: `{"tool_calls": [(name, arguments), ...]}` (arguments a
# dict, or a string sent as is, e.g. malformed JSON), `{"content": "..."}` for a final answer, optionally
# `"usage": (prompt_tokens, completion_tokens)`. `repeat_last=True` answers with the last step forever (a
# runaway loop). The requests it answered are in `requests` as usual; `seen` has each one's messages.


class ChatScript:
    def __init__(self, steps: list[dict[str, Any]], repeat_last: bool = False) -> None:
        self.steps, self.repeat_last, self.answered = list(steps), repeat_last, 0
        self.seen: list[list[dict[str, Any]]] = []

    def __bool__(self) -> bool:
        return self.answered < len(self.steps) or (self.repeat_last and bool(self.steps))

    def next_step(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        self.seen.append(messages)
        step = self.steps[min(self.answered, len(self.steps) - 1)]
        self.answered += 1
        return step


def scripted_completion(fake: FakeOpenAI, body: dict[str, Any]) -> dict[str, Any]:
    script: ChatScript = fake.chat_script  # type: ignore[attr-defined]
    with fake._lock:
        step = script.next_step(body.get("messages", []))
        number = script.answered
    message: dict[str, Any] = {"role": "assistant", "content": step.get("content")}
    if "tool_calls" in step:
        message["tool_calls"] = [
            {"id": f"call_{number}_{index}", "type": "function",
             "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}}
            for index, (name, arguments) in enumerate(step["tool_calls"])]
    prompt_tokens, completion_tokens = step.get("usage", (50, 10))
    return {"id": f"chatcmpl-script-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if "tool_calls" in step else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
