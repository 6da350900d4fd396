"""OpenAI chat models' tokens are counted exactly without a network: tiktoken reads the cl100k_base and
o200k_base files the litellm package ships (runtime/chat/token_counting.py), checked against tiktoken's own
pinned SHA-256, instead of downloading them; a cache folder the deployment names is left as it is.

Each case runs in a fresh interpreter with an empty temporary folder (where tiktoken caches by default) and
a proxy nobody listens on, so that no earlier download and no network can make the count exact."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cortex_tasks.runtime.chat.token_counting import bundled_encodings_folder

COUNT = """
import json, os
from cortex_tasks.runtime.chat import token_counting
found = {}
for model in ("gpt-4o-mini", "gpt-4"):
    counter = token_counting.openai_counter(model)
    encoding = token_counting._tiktoken_encoding(model)
    found[model] = {"tokenizer": counter.tokenizer, "exact": counter.exact,
                    "ids": encoding.encode("hello world") if encoding is not None else None}
found["cache_dir"] = os.environ.get("TIKTOKEN_CACHE_DIR")
print(json.dumps(found))
"""


def count_offline(tmp_path: Path, **environment: str) -> dict:
    env = {name: value for name, value in os.environ.items()
           if name not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    unreachable = "http://127.0.0.1:9"
    env.update(TMPDIR=str(tmp_path), HTTPS_PROXY=unreachable, HTTP_PROXY=unreachable, https_proxy=unreachable,
               http_proxy=unreachable, NO_PROXY="", no_proxy="", **environment)
    out = subprocess.run([sys.executable, "-c", COUNT], env=env, capture_output=True, text=True, timeout=180,
                         check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_bundled_files_are_tiktokens_own():
    import hashlib

    folder = bundled_encodings_folder()
    assert folder is not None, "litellm (a dependency) is not installed"
    # tiktoken's cache names (SHA-1 of the download URL) and the SHA-256 it pins for each encoding.
    pinned = {"9b5ad71b2ce5302211f9c61530b329a4922fc6a4":
              "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",  # cl100k_base
              "fb374d419588a4632f3f557e76b4b70aebbca790":
              "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"}  # o200k_base
    for name, digest in pinned.items():
        url = f"https://openaipublic.blob.core.windows.net/encodings/{'cl100k' if name[0] == '9' else 'o200k'}_base.tiktoken"
        assert hashlib.sha1(url.encode()).hexdigest() == name
        assert hashlib.sha256((Path(folder) / name).read_bytes()).hexdigest() == digest


def test_openai_models_are_counted_exactly_without_a_network(tmp_path):
    found = count_offline(tmp_path)
    assert found["cache_dir"] == bundled_encodings_folder()
    assert found["gpt-4o-mini"] == {"tokenizer": "tiktoken o200k_base", "exact": True, "ids": [24912, 2375]}
    assert found["gpt-4"] == {"tokenizer": "tiktoken cl100k_base", "exact": True, "ids": [15339, 1917]}


def test_a_cache_folder_the_deployment_names_is_kept(tmp_path):
    own = tmp_path / "own-cache"
    own.mkdir()
    found = count_offline(tmp_path, TIKTOKEN_CACHE_DIR=str(own))
    assert found["cache_dir"] == str(own)
    # Empty and offline: the count is an estimate, and says so.
    assert found["gpt-4o-mini"] == {"tokenizer": "approximate (4 characters per token)", "exact": False, "ids": None}
