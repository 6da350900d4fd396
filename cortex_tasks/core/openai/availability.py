"""Whether an OpenAI model may take work now: checked before anything is queued, so a refusal is
immediate and clear instead of a worker's failure later."""
from __future__ import annotations

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.openai import usage as usage_ledger
from cortex_tasks.core.openai.config import is_openai_model, openai_config


def refuse_unavailable_openai(model_name: str) -> None:
    """503 when OpenAI is not configured, 402 when the monthly budget is spent; nothing for other models."""
    if not is_openai_model(model_name):
        return
    config = openai_config()
    if not config.configured:
        raise CortexError("openai_not_configured",
                          f"Model {model_name!r} needs OpenAI, which is not configured on this deployment "
                          "(set CORTEX_OPENAI_API_KEY). The local model SmolLM2-135M-Instruct serves generate.",
                          {"model": model_name}, status=503)
    try:
        usage_ledger.check_budget(config)
    except usage_ledger.BudgetExceeded as exc:
        raise CortexError("budget_exceeded", str(exc),
                          {"model": model_name, "spent_usd": round(exc.spent, 6), "budget_usd": exc.budget},
                          status=402) from None
