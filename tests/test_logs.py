"""offload's log lines are Powertools' own: the lean formatter writes what Powertools' writes."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from enum import StrEnum

import pytest
from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from offload.logs import LeanFormatter, LeanLogger, service_logger

SERVICE = "offload-logs-test"


class Verdict(StrEnum):
    STALE = "stale"


class Text(str):
    pass


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def circular() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


def same_instant(record: logging.LogRecord) -> bool:
    """Both formatters see every record made at the same instant."""
    record.created, record.msecs = 1_796_342_400.123, 123.0
    return True


def lines_from(
    formatter: LambdaPowertoolsFormatter,
    write: Callable[[Logger], None],
    logger_class: type[Logger] = Logger,
    *,
    freeze: bool = True,
) -> list[str]:
    stream = io.StringIO()
    logging.Logger.manager.loggerDict.pop(SERVICE, None)  # a fresh logger, not the last test's
    logger = logger_class(service=SERVICE, logger_formatter=formatter, stream=stream)
    logger._logger.propagate = False  # as service_logger() makes them
    if freeze:
        logger.addFilter(same_instant)
    write(logger)
    return stream.getvalue().splitlines()


def raise_and_log(logger: Logger) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("unexpected", extra={"job_id": "j1"})


def raise_and_warn(logger: Logger) -> None:
    try:
        raise KeyError("k")
    except KeyError:
        logger.warning("handled", exc_info=True)


WRITERS: dict[str, Callable[[Logger], None]] = {
    "plain": lambda lg: lg.info("job accepted"),
    "extras": lambda lg: lg.info("job accepted", extra={"job_id": "j1", "job_type": "echo", "tenant": "t"}),
    "keyword extras": lambda lg: lg.warning("backlog full", depth=3, tenant="t"),
    "a None extra": lambda lg: lg.info("slice failed", extra={"error": None, "attempt": 2}),
    "appended keys": lambda lg: (lg.append_keys(job_id="j1", slice_id=0), lg.info("slice succeeded")),
    "an appended key overridden": lambda lg: (lg.append_keys(job_id="j1"), lg.info("x", extra={"job_id": "j2"})),
    "an appended None": lambda lg: (lg.append_keys(job_type=None), lg.info("x")),
    "correlation id": lambda lg: (lg.set_correlation_id("c-1"), lg.info("job accepted")),
    "cleared state": lambda lg: (lg.append_keys(a=1), lg.clear_state(), lg.info("x")),
    "an unserializable extra": lambda lg: lg.info("x", extra={"when": ValueError("v"), "ids": {1, 2}}),
    "a unicode message": lambda lg: lg.info("café ☕ \u2028 done"),
    "escapes in an extra": lambda lg: lg.info("x", extra={"error": 'a\nb\t"c"\\ \x01\x7f</script>'}),
    "a lone surrogate": lambda lg: lg.info("x", extra={"path": "\udc80.png"}),
    "numbers and flags": lambda lg: lg.info("x", extra={"n": 10**30, "ok": True, "no": False, "f": 1e16}),
    "a str enum": lambda lg: lg.info("x", extra={"verdict": Verdict.STALE}),
    "a JSON message": lambda lg: lg.info('{"a": 1}'),
    "a JSON word": lambda lg: lg.info("true"),
    "JSON with white space": lambda lg: (lg.info(" 42"), lg.info("true "), lg.info('\n{"a": 1}')),
    "NaN and Infinity": lambda lg: (lg.info("NaN"), lg.info("Infinity"), lg.info("-Infinity")),
    "a message that is not JSON": lambda lg: lg.info("Now done; 3 left"),
    "a key that is not text": lambda lg: lg.info("x", extra={1: "a"}),
    "a circular extra": lambda lg: lg.info("x", extra={"loop": circular()}),
    "an extra that cannot be printed": lambda lg: lg.info("x", extra={"bad": Unprintable()}),
    "a reserved key that is no template": lambda lg: (lg.append_keys(timestamp=123), lg.info("x")),
    "a template in a str subclass": lambda lg: (lg.append_keys(location=Text("%(funcName)s:%(lineno)d")), lg.info("x")),
    "stacklevel 1": lambda lg: lg.info("x", stacklevel=1),
    "an integer too long to print": lambda lg: lg.info("x", extra={"n": 10**4300}),
    "an empty exc_info": lambda lg: lg.info("x", exc_info=()),
    "exc_info False": lambda lg: lg.info("x", exc_info=False),
    "stacklevel 3": lambda lg: lg.info("x", stacklevel=3),
    "a number": lambda lg: lg.info("42"),
    "a dict message": lambda lg: lg.info({"a": 1}),
    "arguments": lambda lg: lg.info("took %d ms", 5),
    "an exception": raise_and_log,
    "exc_info": raise_and_warn,
    "thread-local keys": lambda lg: (lg.thread_safe_append_keys(tk=1), lg.info("x"), lg.thread_safe_clear_keys()),
    "stack_trace extra": lambda lg: lg.info("x", extra={"stack_trace": "mine"}),
    "debug below the level": lambda lg: lg.debug("hidden"),
}


@pytest.mark.parametrize("case", WRITERS)
@pytest.mark.parametrize("trace", [TRACE, None])
def test_the_lean_formatter_writes_what_powertools_writes(
    case: str, trace: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if trace:
        monkeypatch.setenv("_X_AMZN_TRACE_ID", trace)
    else:
        monkeypatch.delenv("_X_AMZN_TRACE_ID", raising=False)
    ours = lines_from(LeanFormatter(), WRITERS[case])
    theirs = lines_from(LambdaPowertoolsFormatter(), WRITERS[case])
    assert ours == theirs


@pytest.mark.parametrize("case", WRITERS)
def test_the_lean_logger_writes_what_powertools_writes(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_X_AMZN_TRACE_ID", TRACE)
    # no filter (one would send every line the usual way): the clock itself stands still
    monkeypatch.setattr(time, "time_ns", lambda: 1_796_342_400_500_000_000)
    monkeypatch.setattr(time, "time", lambda: 1_796_342_400.5)  # exact in binary: the same ms
    ours = lines_from(LeanFormatter(), WRITERS[case], LeanLogger, freeze=False)
    theirs = lines_from(LambdaPowertoolsFormatter(), WRITERS[case], freeze=False)
    assert ours == theirs


def test_the_timestamp_follows_the_clock_across_seconds() -> None:
    formatter = LeanFormatter()
    record = logging.LogRecord("n", logging.INFO, __file__, 1, "m", None, None)
    for created in (1_796_342_400.001, 1_796_342_400.999, 1_796_342_401.5):
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert formatter.formatTime(record) == LambdaPowertoolsFormatter().formatTime(record)


def refuse(*_: object, **__: object) -> None:
    raise AssertionError("the usual path was taken")


def test_a_plain_line_takes_the_lean_formatters_own_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LambdaPowertoolsFormatter, "format", refuse)
    [line] = lines_from(LeanFormatter(), WRITERS["extras"])
    assert '"message":"job accepted"' in line and '"job_id":"j1"' in line


def test_a_plain_info_line_makes_no_log_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.Logger, "makeRecord", refuse)
    [line] = lines_from(LeanFormatter(), WRITERS["extras"], LeanLogger, freeze=False)
    assert '"message":"job accepted"' in line and '"location":"<lambda>:' in line


def test_a_second_handler_sees_every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = io.StringIO()

    def write(logger: Logger) -> None:
        logger._logger.addHandler(logging.StreamHandler(seen))
        logger.info("job accepted")

    lines = lines_from(LeanFormatter(), write, LeanLogger)
    assert len(lines) == 1 and seen.getvalue() == "job accepted\n"


def test_service_loggers_do_not_propagate_to_the_root_logger() -> None:
    logger = service_logger("offload-logs-test-service")
    assert isinstance(logger, LeanLogger) and logger._logger.propagate is False


class FailingFlush(io.StringIO):
    def flush(self) -> None:
        raise OSError("the pipe is gone")


def test_a_stream_that_fails_gets_the_line_once_and_the_error_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    stream = FailingFlush()
    logging.Logger.manager.loggerDict.pop(SERVICE, None)
    logger = LeanLogger(service=SERVICE, logger_formatter=LeanFormatter(), stream=stream)
    logger._logger.propagate = False

    logger.info("job accepted")

    assert stream.getvalue().count("job accepted") == 1 and "OSError: the pipe is gone" in capsys.readouterr().err


def test_the_lean_clock_never_runs_ahead_of_the_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_796_342_400_999_999_990)
    [line] = lines_from(LeanFormatter(), WRITERS["plain"], LeanLogger, freeze=False)
    second = time.localtime(1_796_342_400)  # Powertools' default clock is local time
    stamp = f"{time.strftime('%Y-%m-%d %H:%M:%S', second)},999{time.strftime('%z', second)}"
    assert f'"timestamp":"{stamp}"' in line


def test_a_callers_own_serializer_is_used() -> None:
    def serializer(log: object) -> str:
        return "custom"

    ours = lines_from(LeanFormatter(json_serializer=serializer), WRITERS["extras"], LeanLogger)
    assert ours == lines_from(LambdaPowertoolsFormatter(json_serializer=serializer), WRITERS["extras"]) == ["custom"]


class Prefixed(LeanFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return "P " + super().format(record)


class NumberedLogger(logging.Logger):
    def handle(self, record: logging.LogRecord) -> None:
        record.seq = 7
        super().handle(record)


def test_a_record_factory_a_logger_class_or_a_formatter_subclass_sees_every_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_796_342_400_500_000_000)
    monkeypatch.setattr(time, "time", lambda: 1_796_342_400.5)
    plain = logging.getLogRecordFactory()

    def tagged(*args: object, **kwargs: object) -> logging.LogRecord:
        record = plain(*args, **kwargs)
        record.otelTraceID = "abc"
        return record

    monkeypatch.setattr(logging, "_logRecordFactory", tagged)
    [line] = lines_from(LeanFormatter(), WRITERS["plain"], LeanLogger, freeze=False)
    assert '"otelTraceID":"abc"' in line
    monkeypatch.setattr(logging, "_logRecordFactory", plain)

    [line] = lines_from(Prefixed(), WRITERS["plain"], LeanLogger, freeze=False)
    assert line.startswith("P {")

    monkeypatch.setattr(logging.Logger.manager, "loggerClass", NumberedLogger)
    [line] = lines_from(LeanFormatter(), WRITERS["plain"], LeanLogger, freeze=False)
    assert '"seq":7' in line
