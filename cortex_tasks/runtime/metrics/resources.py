"""How busy the machine a worker runs on is, read at scrape time: CPU, memory and, where there is one,
each GPU's utilisation and memory.

`cortex_resource_utilization_ratio{resource, device}` is what the "resource use above 80 %" alert
watches (compose/alerts.yml): `cpu` and `memory` are the machine's (psutil), `gpu` and `gpu_memory` each
device's. GPU figures come from NVIDIA's management library (the `nvidia-ml-py` package, imported as
`pynvml`) when it is installed and finds a driver: it sees the whole device, whichever process uses it.
Without it, a process that has initialised CUDA itself reports its devices' memory through torch (used =
total - free), and no utilisation (torch reads that through the same library).

A prefork worker's parent answers scrapes and never touches CUDA (a CUDA context does not survive a
fork); its children report what torch holds (`cortex_torch_cuda_memory_bytes`) after each task, through
the shared metrics files.
"""
from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psutil
from prometheus_client import Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Summed over the live processes of a prefork worker (each child holds its own CUDA memory).
TORCH_CUDA_MEMORY = Gauge("cortex_torch_cuda_memory_bytes",
                          "GPU memory torch holds in this worker's processes, by device and kind "
                          "(allocated: tensors; reserved: torch's cache, which includes them)",
                          ["device", "kind"], multiprocess_mode="livesum")


class Nvml:
    """NVIDIA's management library, initialised once; `available` is False when it is not installed or
    finds no driver (then it is never asked again)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._library: Any = None
        self._tried = False

    def _load(self) -> Any:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    import pynvml  # the maintained nvidia-ml-py package

                    pynvml.nvmlInit()
                    self._library = pynvml
                except Exception as exc:  # noqa: BLE001 (not installed, no driver, no device: no GPU figures)
                    log.debug("no NVIDIA management library: %s", exc)
            return self._library

    def devices(self) -> list[dict[str, float]]:
        """Per device: utilisation (0..1), memory used and total in bytes; empty without the library."""
        nvml = self._load()
        if nvml is None:
            return []
        found = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
                found.append({"index": index, "utilization": utilization.gpu / 100.0,
                              "memory_used": float(memory.used), "memory_total": float(memory.total)})
        except Exception as exc:  # noqa: BLE001 (a device gone or in error: report what was read)
            log.warning("reading GPU figures failed: %s", exc)
        return found


def torch_devices() -> list[dict[str, float]]:
    """Memory of the device this process uses through torch; empty unless it has initialised CUDA.
    Never initialises CUDA itself: torch is asked only if this process imported it and already uses CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return []
    # Its current device only: asking about another would create a CUDA context there (hundreds of MB).
    index = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    return [{"index": index, "memory_used": float(total - free), "memory_total": float(total)}]


def record_torch_memory() -> None:
    """After a task: what torch holds on each device in this process (nothing unless it uses CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    index = torch.cuda.current_device()
    TORCH_CUDA_MEMORY.labels(str(index), "allocated").set(torch.cuda.memory_allocated(index))
    TORCH_CUDA_MEMORY.labels(str(index), "reserved").set(torch.cuda.memory_reserved(index))


class ResourceCollector(Collector):
    """Machine and GPU use, read when Prometheus scrapes (one psutil and one NVML read per scrape)."""

    def __init__(self, nvml: Nvml | None = None) -> None:
        self._nvml = nvml or Nvml()
        psutil.cpu_percent(interval=None)  # starts the CPU measurement: each scrape reads the time since the last

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ratio = GaugeMetricFamily("cortex_resource_utilization_ratio",
                                  "Share in use (0..1) of the machine's CPU and memory and of each GPU and its memory",
                                  labels=["resource", "device"])
        ratio.add_metric(["cpu", ""], psutil.cpu_percent(interval=None) / 100.0)
        ratio.add_metric(["memory", ""], psutil.virtual_memory().percent / 100.0)
        memory = GaugeMetricFamily("cortex_gpu_memory_bytes", "Memory of each GPU, used and total, in bytes",
                                   labels=["device", "state"])
        devices = self._nvml.devices() or torch_devices()
        for device in devices:
            name = str(device["index"])
            if "utilization" in device:
                ratio.add_metric(["gpu", name], device["utilization"])
            if device["memory_total"]:
                ratio.add_metric(["gpu_memory", name], device["memory_used"] / device["memory_total"])
            memory.add_metric([name, "used"], device["memory_used"])
            memory.add_metric([name, "total"], device["memory_total"])
        yield from (ratio, memory)  # declared even with no GPU (no samples then): dashboards find its name
