"""What this machine has and how busy it is: CPU count and load, memory (from /proc/meminfo on Linux)."""
from __future__ import annotations

import os
from typing import Any

MEMINFO_PATH = "/proc/meminfo"


def memory_use() -> dict[str, Any]:
    """Total and available memory in MiB and the share in use; empty where /proc/meminfo is not readable."""
    try:
        fields = {}
        with open(MEMINFO_PATH) as meminfo:
            for line in meminfo:
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0]) // 1024  # reported in kB
        total, available = fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
        return {"total_mb": total, "available_mb": available,
                "used_percent": round(100 * (total - available) / total, 1) if total else None}
    except (OSError, KeyError, ValueError):
        return {}


def host_use() -> dict[str, Any]:
    """CPU count, the 1, 5 and 15 minute load averages, the 1-minute load as a share of the CPUs, memory."""
    load1, load5, load15 = os.getloadavg()
    return {"cpu_count": os.cpu_count(), "load_average": [load1, load5, load15],
            "cpu_percent": round(100 * load1 / (os.cpu_count() or 1), 1), "memory": memory_use()}
