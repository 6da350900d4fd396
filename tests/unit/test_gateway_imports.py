"""The gateway never imports torch, transformers or spaCy, nor the worker runtime: checked in a fresh
interpreter, after the app is built and its OpenAPI document served."""
from __future__ import annotations

import os
import subprocess
import sys

HEAVY = ("torch", "transformers", "spacy", "sentence_transformers", "presidio_analyzer", "sklearn")


def test_create_app_imports_no_ml_libraries():
    script = (
        "import sys\n"
        "from cortex_web import create_app\n"
        "app = create_app()\n"
        "assert app.test_client().get('/api/v1/openapi.json').status_code == 200\n"
        f"print(sorted(name for name in {HEAVY!r} if name in sys.modules))\n"
        "print(sorted(name for name in sys.modules if name.startswith('cortex_tasks.runtime')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    heavy, runtime = out.stdout.strip().splitlines()[-2:]
    assert heavy == "[]"
    assert runtime == "[]", "the gateway loaded worker runtime modules"
