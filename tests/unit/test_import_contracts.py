"""The layers hold: the contracts in `.importlinter` (the gateway and the worker runtime stand on the core,
neither imports the other, the gateway and the core import no machine-learning library, no import
circles between the modules of one package), checked with import-linter over the source tree."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), str(REPO_ROOT / ".importlinter"), "--no-cache"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout
