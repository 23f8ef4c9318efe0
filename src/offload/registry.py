"""The handler registry: job type -> payload model and what to do with a job of that type.

A job type either runs inline in the worker, or fans out: the worker splits the payload
into slices and each slice runs in the compute function. The compute step is named by a
dotted path and imported only where it runs, so the master and the worker never pay for
the compute function's libraries (Pillow, for instance).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from offload.errors import UnknownJobType

P = TypeVar("P", bound=BaseModel)

InlineFn = Callable[[Any], Any]
SplitFn = Callable[[Any], list[dict[str, Any]]]
ComputeFn = Callable[["SliceContext", dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class SliceContext:
    """What a compute step knows about the slice it runs."""

    job_id: str
    slice: int
    attempt: int


@dataclass(frozen=True)
class JobType:
    name: str
    payload_model: type[BaseModel]
    max_tries: int
    run: InlineFn | None = None
    split: SplitFn | None = None
    compute_path: str = ""

    @property
    def fans_out(self) -> bool:
        return self.split is not None

    def compute(self) -> ComputeFn:
        module_name, _, attr = self.compute_path.partition(":")
        fn: ComputeFn = getattr(importlib.import_module(module_name), attr)
        return fn


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def inline(self, name: str, payload_model: type[P], *, max_tries: int = 3) -> Callable[[InlineFn], InlineFn]:
        """Register ``fn(payload) -> result`` to run inside the worker."""

        def register(fn: InlineFn) -> InlineFn:
            self._add(JobType(name, payload_model, max_tries, run=fn))
            return fn

        return register

    def fan_out(
        self, name: str, payload_model: type[P], *, compute: str, max_tries: int = 3
    ) -> Callable[[SplitFn], SplitFn]:
        """Register ``split(payload) -> [slice input, ...]``; each slice input goes to
        ``compute`` ("module:function", called as ``fn(context, slice_input)``) in the
        compute function, and the job's result is the list of slice results in order."""

        def register(split: SplitFn) -> SplitFn:
            self._add(JobType(name, payload_model, max_tries, split=split, compute_path=compute))
            return split

        return register

    def _add(self, job_type: JobType) -> None:
        if job_type.name in self._types:
            raise ValueError(f"job type {job_type.name!r} is registered twice")
        self._types[job_type.name] = job_type

    def get(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(sorted(self._types)) or "none"
            raise UnknownJobType(f"unknown job type {name!r} (known: {known})") from None

    def find(self, name: object) -> JobType | None:
        """The job type called ``name``, or None (for any name, even one that is not text)."""
        return self._types.get(name) if type(name) is str else None

    def names(self) -> list[str]:
        return sorted(self._types)
