"""The Powertools Logger every offload process logs through, with a lighter formatter.

The lines are Powertools' own JSON format (the same keys, order and values as its
``LambdaPowertoolsFormatter``), but a plain line (a text message, no ``%`` arguments, no
exception, no thread-local keys) is built without the default formatter's per-line work:
copying the whole log record, formatting the time with ``strftime`` every time, and trying
to decode the message as JSON. That work was a tenth of the master's time per request
(docs/benchmarks.md). Every other line goes through Powertools' formatter unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.logging.formatter import RESERVED_LOG_ATTRS, LambdaPowertoolsFormatter

_RESERVED = frozenset(RESERVED_LOG_ATTRS)
# Powertools decodes a message that is a JSON document; those take its own path.
_JSON_STARTS = frozenset('{["-0123456789')
_JSON_WORDS = frozenset(("true", "false", "null"))
_TRACE_ENV = "_X_AMZN_TRACE_ID"


class LeanFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON lines, built directly for the common case (see the module's note)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # one encoder, made once: json.dumps with keyword arguments builds a new one per line
        encoder = json.JSONEncoder(
            default=self.json_default, separators=(",", ":"), indent=self.json_indent, ensure_ascii=False
        )
        self.json_serializer = encoder.encode
        self._second = -1
        self._second_text = ("", "")
        self._trace_raw: str | None = None
        self._trace_id: str | None = None

    def format(self, record: logging.LogRecord) -> str:
        message = record.msg
        if (
            record.args
            or record.exc_info
            or record.stack_info
            or type(message) is not str
            or message[:1] in _JSON_STARTS
            or message in _JSON_WORDS
            or self.thread_safe_get_current_keys()
            or self.datefmt
            or self.use_rfc3339_iso8601
        ):
            return super().format(record)

        line: dict[str, Any] = {}
        for key, value in self.log_format.items():
            if type(value) is str and key in _RESERVED:
                line[key] = self._field(value, record)
            else:
                line[key] = value
        for key, value in record.__dict__.items():
            if key not in _RESERVED:
                line[key] = value
        line["message"] = message  # where the order puts it, else last, as Powertools does
        if self.serialize_stacktrace:
            line.pop("stack_trace", None)
        line["xray_trace_id"] = None if self.log_format.get("xray_trace_id", "") is None else self._trace()
        return self.serialize({k: v for k, v in line.items() if v is not None})

    def _field(self, template: str, record: logging.LogRecord) -> str:
        if template == "%(levelname)s":
            return record.levelname
        if template == "%(funcName)s:%(lineno)d":
            return f"{record.funcName}:{record.lineno}"
        if template == "%(asctime)s":
            return self.formatTime(record)
        return template % {**record.__dict__, "asctime": self.formatTime(record)}

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Powertools' default timestamp (``2026-12-04 00:44:40,535+0000``), ``strftime`` once a second."""
        if datefmt or self.datefmt or self.use_rfc3339_iso8601:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            struct = self.converter(second)
            self._second_text = (time.strftime("%Y-%m-%d %H:%M:%S", struct), time.strftime("%z", struct))
            self._second = second
        clock, zone = self._second_text
        return f"{clock},{int(record.msecs):03d}{zone}"

    def _trace(self) -> str | None:
        """The X-Ray trace id Lambda sets per invocation, parsed once per value."""
        raw = os.environ.get(_TRACE_ENV)
        if raw != self._trace_raw:
            self._trace_raw = raw
            self._trace_id = raw.split(";")[0].replace("Root=", "") if raw else None
        return self._trace_id


def service_logger(service: str) -> Logger:
    """The Powertools Logger of one offload component (a function or the worker)."""
    return Logger(service=service, logger_formatter=LeanFormatter())
