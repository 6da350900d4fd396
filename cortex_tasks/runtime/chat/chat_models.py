"""LangChain chat models over Cortex's own backends, so a conversation runs through LangChain's message
types, prompt templates and memory trimming whichever model answers:

- `LocalChatModel`: the SmolLM2 generator already loaded in this worker (models.loaded.get_model), with
  its chat template over the whole conversation;
- `OpenAIChatModel`: OpenAI chat completions through cortex_tasks.runtime.openai (shared rate limits, retries,
  budget, cost per key, cache for temperature 0), not LangChain's own client, so chat costs are counted
  like /predict's.
"""
from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.validation.generation import GenerationParams
from cortex_tasks.runtime.models.generator import cut_at_stop
from cortex_tasks.runtime.models.loaded import get_model

ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def as_role_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": ROLES.get(message.type, "user"), "content": str(message.content)} for message in messages]


class CortexChatModel(BaseChatModel):
    model_name: str
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop_sequences: list[str] = Field(default_factory=list)

    def _result(self, text: str, prompt_tokens: int, completion_tokens: int, **metadata: Any) -> ChatResult:
        message = AIMessage(content=text, response_metadata={"model_name": self.model_name, **metadata},
                            usage_metadata={"input_tokens": prompt_tokens, "output_tokens": completion_tokens,
                                            "total_tokens": prompt_tokens + completion_tokens})
        return ChatResult(generations=[ChatGeneration(message=message)])


class LocalChatModel(CortexChatModel):
    @property
    def _llm_type(self) -> str:
        return "cortex-local"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        import torch

        generator: Any = get_model(self.model_name)
        options = GenerationParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                                   stop=tuple(stop or self.stop_sequences))
        encoded = generator.tokenizer.apply_chat_template(as_role_messages(messages), add_generation_prompt=True,
                                                          return_dict=True, return_tensors="pt")
        input_ids = encoded["input_ids"].to(generator.model.device)
        if input_ids.shape[1] + options.max_tokens > generator.context_tokens:
            raise ItemError("input_too_long", f"the conversation window and max_tokens exceed the model's context "
                                              f"of {generator.context_tokens} tokens; lower CORTEX_CHAT_MEMORY_TOKENS")
        with torch.inference_mode():
            output = generator.model.generate(input_ids=input_ids,
                                              attention_mask=encoded["attention_mask"].to(generator.model.device),
                                              **generator._generate_kwargs(options))
        new_tokens = output[0][input_ids.shape[1]:]
        text, _ = cut_at_stop(generator.tokenizer.decode(new_tokens, skip_special_tokens=True), options.stop)
        return self._result(text.strip(), int(input_ids.shape[1]), len(new_tokens), cached=False)


class OpenAIChatModel(CortexChatModel):
    owner: str
    # The job's tenant, named here: LangChain may call the model on a thread of its own, outside the scope.
    tenant: str | None = None

    @property
    def _llm_type(self) -> str:
        return "cortex-openai"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        # The OpenAI SDK loads on first use: most workers never call it.
        from cortex_tasks.runtime.openai.client import ChatOptions, openai_service

        options = ChatOptions(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              stop=tuple(stop or self.stop_sequences))
        result = openai_service().chat(self.model_name, as_role_messages(messages), options, self.owner,
                                       source="chat", tenant=self.tenant)
        return self._result(result["text"], result["prompt_tokens"], result["generated_tokens"],
                            cached=result["cached"], usage=result["usage"], finish_reason=result["finish_reason"])
