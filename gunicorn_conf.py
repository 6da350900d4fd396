"""Gunicorn settings of the gateway (`gunicorn -c python:gunicorn_conf cortex_web.wsgi:app`), shared by
`cortex web`, `cortex up` and the benchmarks.

Metrics across processes: every gateway process writes its Prometheus metrics to files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode), and whichever process answers a scrape
of /metrics or /api/v1/health/cache reports the sum over all of them. Without it, each process would
answer with its own counters and a scrape would see them jump between processes. prometheus_client picks
its mode when it is first imported, so the directory is set up here, in the master before it forks its
workers, and this module never imports cortex_web or prometheus_client at its top.

Connections across processes: see BalancedThreadWorker.

Access log: see RedactingLogger (no key or password reaches it).

Log format: gunicorn's error and access lines and the app's own lines are written in Cortex's format (JSON
lines, or text on a terminal: core/observability/logs.py), with component `gateway`.

Errors gunicorn answers itself (a malformed request line, headers too large): see json_error.

Slow clients: see ReadDeadline.

System calls and thread hand-offs per request: see BalancedThreadWorker.notify and .handle, and
OneWriteResponse.
"""
from __future__ import annotations

import ctypes
import errno
import json
import multiprocessing
import os
import select
import shutil
import socket
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

from gunicorn import util as gunicorn_util
from gunicorn.config import Config as GunicornConfig
from gunicorn.glogging import Logger
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.workers.gthread import ThreadWorker

from cortex_tasks.core.log_redaction import SECRET_HEADERS, redact_keys, redact_query, redact_target
from cortex_tasks.core.observability.logs import configure_logging, use_format_on
from cortex_tasks.core.settings import Settings, reset_settings_cache

# A fresh read, not the cached get_settings(): the master must not cache settings that the processes it
# forks would inherit before on_starting sets CORTEX_GATEWAY_PROCESSES for them.
_settings = Settings()

worker_class = "gunicorn_conf.BalancedThreadWorker"
logger_class = "gunicorn_conf.RedactingLogger"
# Defaults (settings.py): 2 processes, since on two cores cache hits reach twice one process's rate and
# model-bound paths are unchanged; 64 threads, one per waiting client, since requests block while their
# jobs run.
workers = _settings.web_workers
threads = _settings.web_threads
timeout = 120
graceful_timeout = 20

MAX_PROCESSES = 256
# How long a process leaves a new connection to a peer holding fewer before taking it itself.
DEFER_SECONDS = 0.005
DEFER_POLL_SECONDS = 0.0002
NO_PROCESS = -1
# How often a worker process tells the master it is alive (the master acts only after `timeout`, 120 s).
HEARTBEAT_SECONDS = 1.0
# How long a request thread waits for the next request on its keep-alive connection before handing the
# connection back to the worker's event loop (see BalancedThreadWorker.handle).
NEXT_REQUEST_WAIT_SECONDS = 0.002

_created_metrics_dir: str | None = None
# Connections held by each worker process, by slot (NO_PROCESS: free, or its worker not running yet);
# shared by the forked workers.
_connections = None


# How `cortex up`, `cortex web` and the benchmarks run the gateway: an access line per request, on stdout.
ACCESS_LOG_TO_STDOUT = ("--access-logfile", "-")


def command(bind: str, workers: int | None = None, threads: int | None = None, *options: str) -> list[str]:
    """The gateway's command line; processes and threads not given come from the settings above."""
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:gunicorn_conf", "cortex_web.wsgi:app", "-b", bind]
    if workers:
        argv += ["-w", str(workers)]
    if threads:
        argv += ["--threads", str(threads)]
    return argv + list(options)


def on_starting(server) -> None:
    global _created_metrics_dir, _connections
    # The app's loggers write through the root logger; the processes forked from here inherit it.
    configure_logging("gateway")
    # Start from an empty metrics directory: the given one (stale files removed) or a private one.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink()
    else:
        _created_metrics_dir = tempfile.mkdtemp(prefix="cortex-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _created_metrics_dir
    _connections = multiprocessing.RawArray(ctypes.c_long, [NO_PROCESS] * MAX_PROCESSES)
    # The processes share the gateway's budget of messages in flight (Settings.coalesce_max_inflight).
    os.environ["CORTEX_GATEWAY_PROCESSES"] = str(server.cfg.workers)
    # Its in-flight bound is sized to the threads it really has (cortex_web/limits.py).
    os.environ["CORTEX_WEB_THREADS"] = str(server.cfg.threads)
    # configure_logging above cached the settings read before these two were set; the processes forked
    # from here would inherit that copy and never see them.
    reset_settings_cache()


def pre_fork(server, worker) -> None:
    """A free slot in the connection table for the worker about to be forked (the master forks one at a
    time; the worker being forked is not in server.WORKERS yet). The worker fills it in once it runs:
    until then its peers do not wait for it."""
    taken = {getattr(other, "slot", None) for other in server.WORKERS.values()}
    worker.slot = next((slot for slot in range(MAX_PROCESSES) if slot not in taken), None)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    if getattr(worker, "slot", None) is not None:
        _connections[worker.slot] = NO_PROCESS
    # A process that is gone stops counting in gauges of live processes (its counters stay summed).
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _created_metrics_dir:
        shutil.rmtree(_created_metrics_dir, ignore_errors=True)


# What gunicorn's own refusals are called in Cortex's error shape (cortex_web/errors.py uses the same codes).
GUNICORN_ERROR_CODES = {400: "bad_request", 403: "forbidden", 431: "request_header_fields_too_large",
                        500: "internal_error", 501: "not_implemented"}


def json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it could not parse, as `{"error": {"code", "message", "details"}}`
    like every other Cortex error (gunicorn writes an HTML page, and has no setting or hook for its body:
    its writer, gunicorn.util.write_error, is replaced below)."""
    body = json.dumps({"error": {"code": GUNICORN_ERROR_CODES.get(status_int, "http_error"),
                                 "message": mesg or reason, "details": {}}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    gunicorn_util.write_nonblock(sock, head + body)


gunicorn_util.write_error = json_error


class SlowClient(ConnectionResetError):
    """A client that did not send its request within its read deadline. A ConnectionResetError: gunicorn
    then closes the connection quietly (it logs other socket errors with a traceback)."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "the client did not send its request in time")


class ReadDeadline:
    """The socket a request is read from, with a deadline on the whole request.

    gunicorn's gthread worker has a keep-alive timeout and a worker timeout but no limit on how long a
    client may take to send a request: 40 connections sending a byte a second held 40 threads for as long
    as they liked, and with them the gateway. Each request gets CORTEX_REQUEST_READ_TIMEOUT seconds from
    its first byte, and every chunk received adds its size / CORTEX_REQUEST_MIN_RATE seconds, so a large
    body sent at a normal rate is never cut off while a trickle is closed soon after the grace period. A
    timeout on each recv() would not do: a byte a second never waits long on any one of them. Written here
    because neither gunicorn (23) nor a maintained WSGI middleware bounds the read of the request line and
    headers, which happens before the application is called."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = float("inf")

    def start_request(self, grace: float) -> None:
        self.deadline = time.monotonic() + grace

    def recv(self, size: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        self._sock.settimeout(max(remaining, 0.0))
        try:
            data = self._sock.recv(size)
        except (TimeoutError, BlockingIOError):
            raise SlowClient() from None
        finally:
            self._sock.settimeout(None)
        self.deadline += len(data) / max(1, _settings.request_min_bytes_per_second)
        return data

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class BalancedThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, except that a process holding more connections than a peer leaves a
    new connection to that peer.

    Every process is woken by a new connection and the first to call accept() takes it, so a burst of
    keep-alive connections (eight clients connecting at once) can all land on one process, whose GIL
    then serves them all while the other processes idle. A process that defers takes the connection
    itself after DEFER_SECONDS, so a busy or stuck peer never holds a client back for longer."""

    def init_process(self) -> None:
        self._deferring_since = self._last_deferral = 0.0
        self._last_heartbeat = 0.0
        super().init_process()

    def notify(self) -> None:
        """gunicorn's heartbeat, at most once every HEARTBEAT_SECONDS. gthread writes it (a utime() on
        a temporary file) on every turn of its loop, i.e. once or twice per request: a system call that
        also gives up the GIL, which a thread then waits to get back behind the request threads (12% of
        the gateway's busy samples in py-spy at 8 clients on cache hits). The master only compares it
        with `timeout`."""
        now = time.monotonic()
        if now - getattr(self, "_last_heartbeat", 0.0) >= HEARTBEAT_SECONDS:
            self._last_heartbeat = now
            super().notify()

    def enqueue_req(self, conn) -> None:
        # Each request (keep-alive ones too) gets its own read deadline (ReadDeadline), counted from when its
        # first bytes arrived, not from when a thread took it: slow clients queued behind slow clients must
        # not each get a fresh grace period. As gunicorn's, with the deadline set before a thread can read.
        conn.init()
        reader = conn.parser.unreader
        if not isinstance(reader.sock, ReadDeadline):
            reader.sock = ReadDeadline(reader.sock)
        reader.sock.start_request(_settings.request_read_seconds)
        self._wrap_future(self.tpool.submit(self.handle, conn), conn)

    def handle(self, conn):
        """gunicorn's handling of one request, then of the connection's next ones while each comes within
        NEXT_REQUEST_WAIT_SECONDS and no other connection waits for a thread. gthread gives every
        keep-alive connection back to its event loop after each request, which takes it from the poller
        again when the next request comes and hands it to a thread again: two thread wake-ups, a future
        and the poller's bookkeeping per request (at 8 clients on cached predictions, 12% of the gateway's
        CPU per request and 11% of its rate). Each request still gets its own read deadline."""
        while True:
            keepalive, conn = super().handle(conn)
            if not (keepalive and self.alive and self._next_request_comes(conn)):
                return keepalive, conn
            conn.parser.unreader.sock.start_request(_settings.request_read_seconds)

    def get_thread_pool(self):
        return RequestThreads(max_workers=self.cfg.threads)

    def _next_request_comes(self, conn) -> bool:
        if self.tpool.waiting():  # this thread is wanted by a connection whose request has come
            return False
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        try:
            return bool(poller.poll(NEXT_REQUEST_WAIT_SECONDS * 1000))
        except OSError:
            return False

    def accept(self, server, listener) -> None:
        if self._leave_to_peer():
            time.sleep(DEFER_POLL_SECONDS)  # the listener stays readable: asked again on the next loop
            return
        super().accept(server, listener)
        self._publish()

    def murder_keepalived(self) -> None:  # runs on every turn of the worker's loop
        super().murder_keepalived()
        self._publish()

    def _publish(self) -> None:
        if getattr(self, "slot", None) is not None:
            _connections[self.slot] = self.nr_conns

    def _leave_to_peer(self) -> bool:
        if getattr(self, "slot", None) is None or _connections is None:
            return False
        peers = [held for slot, held in enumerate(_connections[:])
                 if held != NO_PROCESS and slot != self.slot]
        if not peers or self.nr_conns <= min(peers):
            return False
        now = time.monotonic()
        if now - self._last_deferral > 10 * DEFER_POLL_SECONDS:  # a new connection, not the same one again
            self._deferring_since = now
        self._last_deferral = now
        return now - self._deferring_since < DEFER_SECONDS


class RequestThreads(futures.ThreadPoolExecutor):
    """gthread's thread pool, which can tell how many requests wait for a thread."""

    def waiting(self) -> int:
        return self._work_queue.qsize()  # CPython's pool keeps its pending work items in this queue


class OneWriteResponse(gunicorn_wsgi.Response):
    """gunicorn's response, except that a response whose head is not sent yet goes out with its first
    body chunk in one write: gunicorn sends the head and the body with a system call each (two sends per
    JSON answer, each giving up the GIL and taking it back behind the other request threads). A chunked
    response, or any later chunk, is written as gunicorn writes it. gunicorn (23) has no setting for it;
    its Response class is replaced below, as its error writer is above."""

    def write(self, arg: bytes) -> None:
        if self.headers_sent or self.chunked or not isinstance(arg, bytes):
            super().write(arg)
            return
        if self.response_length is not None:  # as gunicorn: never more than the announced length
            arg = arg[:max(0, self.response_length - self.sent)]
        head = "".join([*self.default_headers(), *(f"{name}: {value}\r\n" for name, value in self.headers), "\r\n"])
        self.headers_sent = True
        self.sent += len(arg)
        gunicorn_util.write(self.sock, gunicorn_util.to_bytestring(head, "latin-1") + arg)


gunicorn_wsgi.Response = OneWriteResponse


DEFAULT_ACCESS_LOG_FORMAT = GunicornConfig().access_log_format


class RedactingLogger(Logger):
    """gunicorn's logger, except that the access log's request line, query, referer and credential
    headers are redacted (cortex_tasks/core/log_redaction.py): a client that sends `?api_key=ctx_...`
    (which the gateway ignores; keys go in headers) would otherwise have its key written whole to the
    log, whatever access_log_format an operator picks."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        use_format_on([self.error_log, self.access_log], "gateway")

    def atoms(self, resp, req, environ, request_time) -> dict:
        if self.cfg.access_log_format == DEFAULT_ACCESS_LOG_FORMAT:
            atoms = self._default_format_atoms(resp, environ)
        else:  # gunicorn's every atom: the query, path and headers an operator's format may show too
            atoms = super().atoms(resp, req, environ, request_time)
            atoms["q"] = redact_query(atoms.get("q") or "")
            atoms["U"] = redact_keys(atoms.get("U") or "")
            for name in SECRET_HEADERS:
                for suffix in ("i", "o"):
                    if f"{{{name}}}{suffix}" in atoms:
                        atoms[f"{{{name}}}{suffix}"] = "[redacted]"
        method, _, rest = str(atoms["r"]).partition(" ")
        target, _, protocol = rest.rpartition(" ")
        atoms["r"] = f"{method} {redact_target(target)} {protocol}" if target else redact_keys(str(atoms["r"]))
        atoms["f"] = redact_target(str(atoms.get("f") or "-"))
        return atoms

    def _default_format_atoms(self, resp, environ) -> dict:
        """The nine atoms gunicorn's default access format shows, as gunicorn's atoms() computes them. That
        computes some thirty more, and one per request header, response header and environ variable, for
        every request: with the access log on (as `cortex up` runs the gateway) the access line was a
        fifth of a cached prediction's CPU. tests/unit/test_log_redaction.py checks the lines are the same."""
        status = resp.status
        sent = getattr(resp, "sent", None)
        return {"h": environ.get("REMOTE_ADDR", "-"), "l": "-", "u": self._get_user(environ) or "-",
                "t": self.now(),
                "r": f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
                "s": status.split(None, 1)[0] if isinstance(status, str) else status,
                "b": str(sent) if sent is not None else "-",
                "f": environ.get("HTTP_REFERER", "-"), "a": environ.get("HTTP_USER_AGENT", "-")}

    # The error log names the request too ("Error handling request /path?api_key=...").
    def critical(self, msg, *args, **kwargs) -> None:
        super().critical(msg, *_redacted(args), **kwargs)

    def error(self, msg, *args, **kwargs) -> None:
        super().error(msg, *_redacted(args), **kwargs)

    def warning(self, msg, *args, **kwargs) -> None:
        super().warning(msg, *_redacted(args), **kwargs)

    def info(self, msg, *args, **kwargs) -> None:
        super().info(msg, *_redacted(args), **kwargs)

    def debug(self, msg, *args, **kwargs) -> None:
        super().debug(msg, *_redacted(args), **kwargs)

    def exception(self, msg, *args, **kwargs) -> None:
        super().exception(msg, *_redacted(args), **kwargs)


def _redacted(args: tuple) -> tuple:
    return tuple(redact_target(arg) if isinstance(arg, str) else arg for arg in args)
