"""The gateway never imports torch, transformers or spaCy: checked in a fresh interpreter."""
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
        "with app.test_request_context():\n"
        "    from cortex_web.openapi import build_spec\n"
        "    build_spec(app)\n"
        f"print(sorted(name for name in {HEAVY!r} if name in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
