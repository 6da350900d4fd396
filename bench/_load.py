"""A lean HTTP load generator: asyncio, raw HTTP/1.1 keep-alive connections, one coroutine per client.

Each request carries distinct texts (taken in order from the given list; no repeats unless asked),
so the cache cannot flatter a throughput figure. Prints one JSON report with its own CPU use.
"""
from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from urllib.parse import urlsplit


async def _client(host: str, port: int, path: str, key: str, bodies, deadline: float, latencies: list[float],
                  errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            body = next(bodies, None)
            if body is None:
                return
            request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            status = int(status_line.split()[1])
            if status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors.append(status)
    finally:
        writer.close()


def _bodies(texts: list[str], items: int, repeat: bool):
    index = 0
    while True:
        if index + items > len(texts):
            if not repeat:
                return
            index = 0
        yield json.dumps({"task": "embed", "inputs": texts[index:index + items], "wait": 30}).encode()
        index += items


async def _main(spec: dict) -> dict:
    parts = urlsplit(spec["url"])
    bodies = _bodies(spec["texts"], spec["items"], spec["repeat"])
    latencies: list[float] = []
    errors: list[int] = []
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + spec["seconds"]
    await asyncio.gather(*[_client(parts.hostname, parts.port, spec["path"], spec["key"], bodies, deadline,
                                   latencies, errors) for _ in range(spec["clients"])])
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"requests": len(latencies), "errors": len(errors), "error_statuses": sorted(set(errors)),
            "seconds": round(elapsed, 2), "latencies_ms": latencies,
            "client_cpu_percent_of_one_core": round(100 * cpu / elapsed, 1)}


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(json.dumps(asyncio.run(_main(json.load(handle)))))
