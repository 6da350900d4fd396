"""No key or password reaches the gateway's logs: credential query parameters and Cortex keys are redacted
in the request line, query, referer and headers that gunicorn's access log can write, and in its error log."""
from __future__ import annotations

import datetime
import logging
from types import SimpleNamespace

from gunicorn.config import Config

from cortex_tasks.core.log_redaction import redact_keys, redact_query, redact_target
from gunicorn_conf import RedactingLogger

KEY = "ctx_0123456789ab_" + "S3cr3t-Value_" * 3


def test_credential_parameters_are_redacted_and_others_kept():
    query = f"api_key={KEY}&page=2&access_token=abc&Token=x&key=y&X-Api-Key=z&password=p&format=json"
    redacted = redact_query(query)
    assert "S3cr3t" not in redacted and "abc" not in redacted and "=p&" not in redacted
    assert "page=2" in redacted and "format=json" in redacted
    assert "api_key=[redacted]" in redacted and "access_token=[redacted]" in redacted
    assert redact_query("api%5Fkey=secret") == "api%5Fkey=[redacted]"  # percent-encoded name


def test_a_key_anywhere_keeps_only_its_id():
    assert redact_keys(f"Bearer {KEY}") == "Bearer ctx_0123456789ab_[redacted]"
    assert redact_target(f"/api/v1/jobs/{KEY}?note={KEY}") == (
        "/api/v1/jobs/ctx_0123456789ab_[redacted]?note=ctx_0123456789ab_[redacted]")
    assert redact_target("/ready") == "/ready"


def _access_line(tmp_path, environ_extra: dict[str, str], access_format: str) -> str:
    log_file = tmp_path / "access.log"
    config = Config()
    config.set("accesslog", str(log_file))
    config.set("access_log_format", access_format)
    logger = RedactingLogger(config)
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": f"/ready?api_key={KEY}&x=1", "SERVER_PROTOCOL": "HTTP/1.1",
               "PATH_INFO": "/ready", "QUERY_STRING": f"api_key={KEY}&x=1", "REMOTE_ADDR": "127.0.0.1",
               **environ_extra}
    # What gunicorn passes its logger: the response's status, headers and size; the request's headers.
    response = SimpleNamespace(status="200 OK", headers=[("Content-Type", "application/json")], sent=17)
    request = SimpleNamespace(headers=[("AUTHORIZATION", f"Bearer {KEY}"), ("X-API-KEY", KEY)])
    logger.access(response, request, environ, datetime.timedelta(milliseconds=3))
    for handler in logger.access_log.handlers:
        handler.flush()
    return log_file.read_text()


def test_the_access_log_never_holds_a_key_whatever_its_format(tmp_path):
    line = _access_line(tmp_path, {"HTTP_REFERER": f"http://app/?token={KEY}"},
                        '%(h)s "%(r)s" %(s)s q=%(q)s U=%(U)s f=%(f)s auth=%({authorization}i)s '
                        'xkey=%({x-api-key}i)s')
    assert "S3cr3t" not in line, line
    assert "auth=[redacted]" in line and "xkey=[redacted]" in line
    assert "GET /ready?api_key=[redacted]&x=1 HTTP/1.1" in line and " 200 " in line
    assert "q=api_key=[redacted]&x=1" in line and "f=http://app/?token=[redacted]" in line


def test_the_error_log_redacts_the_request_it_names(tmp_path):
    log_file = tmp_path / "error.log"
    config = Config()
    config.set("errorlog", str(log_file))
    logger = RedactingLogger(config)
    logger.error_log.setLevel(logging.INFO)
    logger.exception("Error handling request %s", f"/ready?api_key={KEY}")
    for handler in logger.error_log.handlers:
        handler.flush()
    text = log_file.read_text()
    assert "Error handling request /ready?api_key=[redacted]" in text and "S3cr3t" not in text


def test_the_default_access_line_is_gunicorns_whichever_way_its_atoms_are_computed():
    """gunicorn's default format is filled from the nine atoms it shows (RedactingLogger._default_format_atoms);
    the same format filled from gunicorn's own atoms, redacted, gives the same line."""
    import base64

    from gunicorn.glogging import SafeAtoms

    from gunicorn_conf import DEFAULT_ACCESS_LOG_FORMAT

    def line(access_format: str, environ: dict[str, str], response: SimpleNamespace) -> str:
        config = Config()
        config.set("access_log_format", access_format)
        logger = RedactingLogger(config)
        logger.now = lambda: "[08/Dec/2026:00:00:00 +0000]"
        request = SimpleNamespace(headers=[("AUTHORIZATION", environ.get("HTTP_AUTHORIZATION", ""))])
        atoms = logger.atoms(response, request, environ, datetime.timedelta(milliseconds=3))
        return DEFAULT_ACCESS_LOG_FORMAT % SafeAtoms(atoms)

    plain = {"REQUEST_METHOD": "POST", "RAW_URI": "/api/v1/predict", "SERVER_PROTOCOL": "HTTP/1.1",
             "PATH_INFO": "/api/v1/predict", "QUERY_STRING": "", "REMOTE_ADDR": "10.0.0.7",
             "HTTP_AUTHORIZATION": f"Bearer {KEY}"}
    basic = base64.b64encode(b"alice:pw").decode()
    environs = [plain, {**plain, "RAW_URI": f"/ready?api_key={KEY}&x=1", "HTTP_REFERER": f"http://app/?token={KEY}",
                        "HTTP_USER_AGENT": 'curl/8 "quoted"', "HTTP_AUTHORIZATION": f"Basic {basic}"},
                {key: value for key, value in plain.items() if key != "REMOTE_ADDR"}]
    responses = [SimpleNamespace(status="200 OK", headers=[("Content-Type", "application/json")], sent=17),
                 SimpleNamespace(status="404 NOT FOUND", headers=[], sent=0),
                 SimpleNamespace(status="500 INTERNAL SERVER ERROR", headers=[], sent=None)]
    for environ in environs:
        for response in responses:
            fast = line(DEFAULT_ACCESS_LOG_FORMAT, environ, response)
            assert fast == line(DEFAULT_ACCESS_LOG_FORMAT + " ", environ, response)  # gunicorn's atoms()
            assert "S3cr3t" not in fast
    shown = line(DEFAULT_ACCESS_LOG_FORMAT, environs[1], responses[0])
    assert '"curl/8 \\"quoted\\""' in shown and " alice " in shown
