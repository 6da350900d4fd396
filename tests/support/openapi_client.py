"""Generate a Python client from the gateway's OpenAPI document (openapi-python-client) and import it: shared
by the unit test (in-process, no services) and the integration test (real workers)."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any


@contextmanager
def generated_client(spec: dict[str, Any], folder: Path) -> Iterator[ModuleType]:
    """The `cortex_client` package generated from `spec` into `folder`, importable while the context lasts."""
    path = folder / "openapi.json"
    path.write_text(json.dumps(_readable_bodies(spec)))
    # The generator formats its output with ruff, found on PATH: the venv's.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path", str(path),
                          "--output-path", str(folder / "cortex_client"), "--meta", "none"],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # It warns (and skips the operation or model) about what it cannot turn into Python.
    assert "Warning" not in out.stdout + out.stderr, out.stdout + out.stderr
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("cortex_client")
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name == "cortex_client" or name.startswith("cortex_client.")]:
            del sys.modules[name]


def _readable_bodies(spec: dict[str, Any]) -> dict[str, Any]:
    """The document less the request bodies openapi-python-client cannot read, where the same operation also
    takes JSON; a client sends those with any HTTP library.

    - Arrow IPC (stream events): it cannot read that media type, and mapped to octet-stream beside JSON it
      writes a function that does not import.
    - multipart/form-data uploads (images, recordings): it reads the form's anyOf (`request`, or the
      required fields) as `Any` and writes `isinstance(body, Any)`, which raises on every call, the JSON
      ones too; and it ignores the encoding object, sending a boolean field as `True`, which is not JSON."""
    spec = json.loads(json.dumps(spec))
    for item in spec["paths"].values():
        for operation in item.values():
            content = operation.get("requestBody", {}).get("content", {})
            if len(content) > 1:
                content.pop("application/vnd.apache.arrow.stream", None)
                content.pop("multipart/form-data", None)
    return spec
