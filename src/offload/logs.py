"""The Powertools Logger every offload process logs through, made cheaper per line.

The lines are Powertools' own JSON (the same keys, order and values as its
``LambdaPowertoolsFormatter`` writes; tests/test_logs.py compares them). What changes is
the cost of a plain line (a text message, no ``%`` arguments, no exception): the default
formatter copies the whole log record, runs ``strftime`` and tries to decode the message
as JSON on every line, and the standard library builds a record and walks the stack for
it. That was a quarter of the master's time per request (docs/benchmarks.md). So:

- ``LeanFormatter`` builds a plain line's JSON directly and formats the time once a second;
- ``LeanLogger.info`` writes a plain info line straight to the logger's one handler when
  nothing else could see the record (no filters, no other handlers, no propagation).

Anything else goes through Powertools and the standard library unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.logging.formatter import RESERVED_LOG_ATTRS, LambdaPowertoolsFormatter
from pydantic_core import PydanticSerializationError, to_json

from offload.json_limits import json_can_write

_RESERVED = frozenset(RESERVED_LOG_ATTRS)
# Keys an extra may not use: the standard library refuses the record's own attributes
# (KeyError), and Powertools drops its reserved keys. Such a line takes the usual path.
_NOT_EXTRAS = _RESERVED | frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
# Powertools decodes a message that is a JSON document (json.loads: white space around it,
# NaN and Infinity too); whatever might be one takes its path.
_JSON_STARTS = frozenset('{["-0123456789NI \t\n\r')
_JSON_WORDS = frozenset(("true", "false", "null"))
_TRACE_ENV = "_X_AMZN_TRACE_ID"


def _plain_values(line: Mapping[str, object]) -> bool:
    """Only text, flags and integers json.dumps can write: pydantic-core writes those alike."""
    for value in line.values():
        kind = type(value)
        if kind is str or kind is bool:
            continue
        if kind is not int or not json_can_write(value):  # type: ignore[arg-type]
            return False
    return True


class LeanFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON lines, a plain one built directly (see the module's note)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if "json_serializer" not in kwargs:
            # one encoder, made once: json.dumps with keyword arguments builds one per line
            encoder = json.JSONEncoder(
                default=self.json_default, separators=(",", ":"), indent=self.json_indent, ensure_ascii=False
            )
            self.json_serializer = encoder.encode
        # the lean path decodes no message (a caller's own decoder must see every one)
        self._plain = "json_deserializer" not in kwargs
        # compact lines with the default serialization (not POWERTOOLS_DEV's indented ones)
        self._plain_json = self.json_indent is None and not {"json_serializer", "json_default"} & kwargs.keys()
        # each cache is one tuple, replaced whole: threads (the worker's) read it without a lock
        self._clock: tuple[int, str, str] = (-1, "", "")  # second, its date and time, its zone
        self._trace_cache: tuple[str | None, str | None] = (None, None)  # the variable, its trace id

    def format(self, record: logging.LogRecord) -> str:
        # exc_info exactly None or False: Powertools reads any tuple, even an empty one
        exc_info: object = record.exc_info
        if not (record.args or record.stack_info) and (exc_info is None or exc_info is False):
            extras = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
            try:
                line = self.plain_line(
                    record.levelname, record.funcName, record.lineno, record.created, record.msecs, record.msg, extras
                )
            except Exception:
                line = None  # Powertools' formatter meets the same trouble and raises it
            if line is not None:
                return line
        return super().format(record)

    def plain_line(
        self,
        level_name: str,
        function: str,
        lineno: int,
        created: float,
        msecs: float,
        message: object,
        extras: Mapping[str, object],
    ) -> str | None:
        """The line for a plain record, or None when it is not one (Powertools formats it)."""
        if (
            not self._plain
            or type(message) is not str
            or message[:1] in _JSON_STARTS
            or message.rstrip() in _JSON_WORDS
            or any(type(key) is not str for key in extras)  # Powertools fails on these
            or self.datefmt
            or self.use_rfc3339_iso8601
            or self.thread_safe_get_current_keys()
        ):
            return None
        line: dict[str, Any] = {}
        for key, value in self.log_format.items():
            if not value or key not in _RESERVED:
                line[key] = value
            elif type(value) is not str:
                return None  # Powertools refuses a reserved key that is not a template
            elif value == "%(levelname)s":
                line[key] = level_name
            elif value == "%(funcName)s:%(lineno)d":
                line[key] = f"{function}:{lineno}"
            elif value == "%(asctime)s":
                line[key] = self._timestamp(created, msecs)
            else:
                return None  # a field template of someone else's: Powertools fills it in
        line.update(extras)
        line["message"] = message  # where the order puts it, else last, as Powertools does
        if self.serialize_stacktrace:
            line.pop("stack_trace", None)
        line["xray_trace_id"] = None if self.log_format.get("xray_trace_id", "") is None else self._trace()
        clean = {k: v for k, v in line.items() if v is not None}
        if self._plain_json and _plain_values(clean):
            try:  # pydantic-core writes these exactly as json.dumps does, in a third of the time
                return to_json(clean).decode()
            except PydanticSerializationError:  # a lone surrogate: json.dumps writes it as it is
                pass
        return self.serialize(clean)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt or self.datefmt or self.use_rfc3339_iso8601:
            return super().formatTime(record, datefmt)
        return self._timestamp(record.created, record.msecs)

    def _timestamp(self, created: float, msecs: float) -> str:
        """Powertools' default timestamp (``2026-12-04 00:44:40,535+0000``), ``strftime`` once a second."""
        second = int(created)
        cached, clock, zone = self._clock
        if second != cached:
            struct = self.converter(second)
            clock, zone = time.strftime("%Y-%m-%d %H:%M:%S", struct), time.strftime("%z", struct)
            self._clock = (second, clock, zone)
        return f"{clock},{int(msecs):03d}{zone}"

    def _trace(self) -> str | None:
        """The X-Ray trace id Lambda sets per invocation, parsed once per value."""
        raw = os.environ.get(_TRACE_ENV)
        cached_raw, trace_id = self._trace_cache
        if raw != cached_raw:
            trace_id = raw.split(";")[0].replace("Root=", "") if raw else None
            self._trace_cache = (raw, trace_id)
        return trace_id


class LeanLogger(Logger):
    """Powertools' Logger; a plain info line skips the log record (see the module's note)."""

    def info(
        self,
        msg: object,
        *args: object,
        exc_info: Any = None,
        stack_info: bool = False,
        stacklevel: int = 2,
        extra: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        plain_call = not (args or stack_info or stacklevel != 2) and (exc_info is None or exc_info is False)
        if plain_call and self._write_plain(logging.INFO, msg, extra, kwargs, sys._getframe(1)):
            return
        # one frame more between the caller and the standard library's stack walk (at 1 the
        # walk names Powertools' own frame, as it would without this one)
        super().info(
            msg,
            *args,
            exc_info=exc_info,
            stack_info=stack_info,
            stacklevel=stacklevel + 1 if stacklevel > 1 else stacklevel,
            extra=extra,
            **kwargs,
        )

    def _write_plain(
        self, level: int, msg: object, extra: Mapping[str, object] | None, kwargs: dict[str, object], caller: Any
    ) -> bool:
        """Write the line straight to the one handler; False when the usual path must run."""
        logger = self._logger
        if (
            type(logger) is not logging.Logger  # a logger class of someone else's may handle records itself
            or logging.getLogRecordFactory() is not logging.LogRecord  # a factory may add fields
            or logger.propagate
            or logger.filters
            or len(logger.handlers) != 1
            or getattr(self, "_buffer_config", None)
            or not logger.isEnabledFor(level)
        ):
            return False
        handler = logger.handlers[0]
        formatter = handler.formatter
        if type(handler) is not logging.StreamHandler or handler.filters or level < handler.level:
            return False
        if type(formatter) is not LeanFormatter:  # a subclass may format lines its own way
            return False
        extras = {**extra, **kwargs} if extra else kwargs
        code = caller.f_code
        if not _NOT_EXTRAS.isdisjoint(extras) or _skipped_by_stack_walk(code.co_filename):
            return False
        now_ns = time.time_ns()
        try:
            line = formatter.plain_line(
                logging.getLevelName(level),
                code.co_name,
                caller.f_lineno,
                now_ns // 1_000_000_000,
                (now_ns // 1_000_000) % 1000,
                msg,
                extras,
            )
        except Exception:
            return False  # the usual path meets it too, and reports it as logging does
        if line is None:
            return False
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.flush()
        except RecursionError:
            raise
        except Exception:
            # as StreamHandler.emit does: report it on stderr and carry on (the usual path
            # must not write the line a second time)
            record = logger.makeRecord(logger.name, level, code.co_filename, caller.f_lineno, msg, (), None)
            handler.handleError(record)
        finally:
            handler.release()
        return True


def _skipped_by_stack_walk(filename: str) -> bool:
    """Whether the standard library's findCaller passes over a frame of this file."""
    return filename == logging._srcfile or ("importlib" in filename and "_bootstrap" in filename)


def service_logger(service: str) -> Logger:
    """The Powertools Logger of one offload component (a function or the worker).

    It does not propagate: in Lambda the root logger's handler (the runtime's) would drop
    its records anyway (Powertools filters them out there), and elsewhere a root handler
    would print every line a second time.
    """
    logger = LeanLogger(service=service, logger_formatter=LeanFormatter())
    logger._logger.propagate = False
    return logger
