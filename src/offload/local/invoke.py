"""``offload invoke``: run one function's handler as ``sam local invoke`` would, without Docker.

The handler, timeout and memory come from the SAM template. The environment is built the
way sam builds it: Globals' variables, then the function's own; a value only a deployed
stack could give (``!GetAtt``, ``!If``, a ``!Sub`` of a resource...) is dropped, while a
``!Ref`` to a template parameter with a default, or to a pseudo parameter, is resolved.
The shell's value of a variable wins over the template's, and ``--env-vars`` (sam's
format: ``{"Parameters": {...}, "<LogicalId>": {...}}``) wins over both, except for the
variables that describe this machine rather than the function (``REDIS_URL``, AWS
credentials and Region): a value set in the shell is kept, since an env-vars file written
for sam's containers points them elsewhere (``host.docker.internal``).

The handler runs in a fresh Python process, so module-scope clients are built with that
environment. Its output streams to stderr; its return value (or Lambda's error document)
comes back through a file, so nothing it prints can be mistaken for the answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

from offload.errors import OffloadError

log = logging.getLogger(__name__)

TEMPLATE_NAMES = ("template.yaml", "template.yml")
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
DEFAULT_TIMEOUT_S = 3.0  # Lambda's defaults
DEFAULT_MEMORY_MB = 128
INIT_ALLOWANCE_S = 30.0  # start-up and imports, on top of the function's timeout
SHORT_FORMS = (
    "Ref",
    "Condition",
    "Sub",
    "GetAtt",
    "If",
    "Join",
    "Select",
    "FindInMap",
    "Equals",
    "Not",
    "And",
    "Or",
    "ImportValue",
    "Split",
    "Base64",
    "Cidr",
    "GetAZs",
)
# set in the shell, these win over --env-vars too
MACHINE_VARIABLES = (
    "REDIS_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
PSEUDO_PARAMETERS = {
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "local",
    "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/local/local",
    "AWS::URLSuffix": "amazonaws.com",
}


class TemplateError(OffloadError):
    """The template is missing, unreadable, or has no such function."""


@dataclass(frozen=True, slots=True)
class Intrinsic:
    """A CloudFormation function in the template (``!Ref X`` is ``Intrinsic("Ref", "X")``)."""

    name: str
    value: Any


# -- reading the template ----------------------------------------------------------------


def find_template(path: Path | None = None) -> Path:
    """``path``, or the template.yaml (or .yml) of the current directory."""
    candidates = [path] if path is not None else [Path(name) for name in TEMPLATE_NAMES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise TemplateError(f"no template at {candidates[0]}")


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise TemplateError("reading the template needs PyYAML: pip install pyyaml") from None
    return yaml


@cache
def _loader() -> Any:
    """A SafeLoader that reads CloudFormation's short forms (``!Ref``, ``!Sub``...)."""
    yaml = _yaml()
    loader: Any = type("CloudFormationLoader", (yaml.SafeLoader,), {})
    for name in SHORT_FORMS:
        loader.add_constructor(f"!{name}", _construct_intrinsic)
    return loader


def _construct_intrinsic(loader: Any, node: Any) -> Intrinsic:
    short = node.tag.removeprefix("!")
    name = short if short in ("Ref", "Condition") else f"Fn::{short}"
    if node.id == "scalar":
        value: Any = loader.construct_scalar(node)
        if short == "GetAtt":
            value = value.split(".", 1)
    elif node.id == "sequence":
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return Intrinsic(name, value)


def load_template(path: Path) -> dict[str, Any]:
    """The template as data, with every intrinsic function as an ``Intrinsic``."""
    yaml = _yaml()
    try:
        template = yaml.load(path.read_text(), Loader=_loader())  # a SafeLoader
    except (OSError, yaml.YAMLError) as e:
        raise TemplateError(f"cannot read {path}: {e}") from None
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise TemplateError(f"{path} is not a template (no Resources)")
    return template


# -- the function and its environment ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """What ``sam local invoke`` reads of one function."""

    logical_id: str
    handler: str
    timeout_s: float
    memory_mb: int
    code_dir: str  # prepended to PYTHONPATH, like the code mounted at /var/task; "" for none
    variables: dict[str, str]


def function_ids(template: Mapping[str, Any]) -> list[str]:
    return [k for k, v in template["Resources"].items() if isinstance(v, dict) and v.get("Type") in FUNCTION_TYPES]


def find_function(template: Mapping[str, Any], name: str) -> str:
    """The logical id ``name`` means: the id itself, or a short name (``master`` for
    ``MasterFunction``), case aside."""
    ids = function_ids(template)
    if name in ids:
        return name
    wanted = name.lower()
    for logical_id in ids:
        if logical_id.lower() in (wanted, f"{wanted}function"):
            return logical_id
    raise TemplateError(f"no function {name!r} in the template (functions: {', '.join(ids) or 'none'})")


def function_spec(template: Mapping[str, Any], name: str, template_dir: Path) -> FunctionSpec:
    """The function ``name`` (see ``find_function``) with Globals applied."""
    logical_id = find_function(template, name)
    resource = template["Resources"][logical_id]
    own = _mapping(resource.get("Properties"))
    defaults = _mapping(_mapping(template.get("Globals")).get("Function"))
    if resource["Type"] != "AWS::Serverless::Function":
        defaults = {}  # Globals apply to SAM functions only
    props = {**defaults, **own}
    parameters = template_parameters(template)
    handler = resolve(props.get("Handler"), parameters)
    if not handler:
        raise TemplateError(f"{logical_id} has no Handler (image functions cannot run here)")
    runtime = resolve(props.get("Runtime"), parameters) or "python"
    if not runtime.startswith("python"):
        raise TemplateError(f"{logical_id} runs on {runtime}; only Python functions can be invoked here")
    return FunctionSpec(
        logical_id=logical_id,
        handler=handler,
        timeout_s=_number(props.get("Timeout"), parameters, DEFAULT_TIMEOUT_S),
        memory_mb=int(_number(props.get("MemorySize"), parameters, DEFAULT_MEMORY_MB)),
        code_dir=_code_dir(props.get("CodeUri"), template_dir),
        variables=_variables(defaults, parameters) | _variables(own, parameters),
    )


def template_parameters(template: Mapping[str, Any]) -> dict[str, str]:
    """What a ``!Ref`` can resolve to here: pseudo parameters, and parameters' defaults."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    values = {**PSEUDO_PARAMETERS, "AWS::Region": region}
    for name, spec in _mapping(template.get("Parameters")).items():
        default = _scalar(_mapping(spec).get("Default")) if "Default" in _mapping(spec) else None
        if default is not None:
            values[name] = default
    return values


def resolve(value: Any, parameters: Mapping[str, str]) -> str | None:
    """An environment value as a string, or None if only a deployed stack could give it."""
    value = _as_intrinsic(value)
    if not isinstance(value, Intrinsic):
        return _scalar(value)
    if value.name == "Ref" and isinstance(value.value, str):
        return parameters.get(value.value)
    if value.name == "Fn::Sub":
        return _sub(value.value, parameters)
    if value.name == "Fn::Join" and isinstance(value.value, list) and len(value.value) == 2:
        delimiter, parts = value.value
        resolved = [resolve(p, parameters) for p in parts] if isinstance(parts, list) else [None]
        return None if None in resolved else str(delimiter).join(str(p) for p in resolved)
    return None


def _sub(spec: Any, parameters: Mapping[str, str]) -> str | None:
    text, local = (spec[0], _mapping(spec[1])) if isinstance(spec, list) and len(spec) == 2 else (spec, {})
    if not isinstance(text, str):
        return None
    names = {**parameters, **{k: resolve(v, parameters) for k, v in local.items()}}
    missing = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"  # ${!Literal} stands for the text ${Literal}
        found = names.get(name)
        missing = missing or found is None
        return found or ""

    result = re.sub(r"\$\{([^}]*)\}", substitute, text)
    return None if missing else result


def _as_intrinsic(value: Any) -> Any:
    """The long form (``{"Ref": "X"}``, ``{"Fn::Sub": ...}``) read like the short one."""
    if isinstance(value, dict) and len(value) == 1:
        [(key, arg)] = value.items()
        if key in ("Ref", "Condition") or str(key).startswith("Fn::"):
            return Intrinsic(key, arg)
    return value


def _scalar(value: Any) -> str | None:
    """Stringified as sam does: booleans as true/false, null as the empty string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list | Intrinsic):
        return None
    return str(value)


def _variables(props: Mapping[str, Any], parameters: Mapping[str, str]) -> dict[str, str]:
    variables = _mapping(_mapping(props.get("Environment")).get("Variables"))
    resolved = {str(k): resolve(v, parameters) for k, v in variables.items()}
    dropped = sorted(k for k, v in resolved.items() if v is None)
    if dropped:
        log.info("not set (the template's value needs a deployed stack): %s", ", ".join(dropped))
    return {k: v for k, v in resolved.items() if v is not None}


def _number(value: Any, parameters: Mapping[str, str], default: float) -> float:
    try:
        return float(resolve(value, parameters) or default)
    except ValueError:
        return default


def _code_dir(code_uri: Any, template_dir: Path) -> str:
    if not isinstance(code_uri, str) or "://" in code_uri:
        return ""
    path = template_dir / code_uri
    return str(path.resolve()) if path.is_dir() else ""


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def env_overrides(path: Path | None, logical_id: str) -> dict[str, str]:
    """The ``--env-vars`` file's values for this function: ``Parameters`` (every
    function's), then the function's own section."""
    if path is None:
        return {}
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TemplateError(f"cannot read the env-vars file {path}: {e}") from None
    if not isinstance(document, dict):
        raise TemplateError(f"{path} must hold a JSON object")
    merged = _mapping(document.get("Parameters")) | _mapping(document.get(logical_id))
    return {str(k): v for k, v in ((k, _scalar(v)) for k, v in merged.items()) if v is not None}


def environment(spec: FunctionSpec, overrides: Mapping[str, str], shell: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: template < shell < ``--env-vars`` < Lambda's own variables;
    but REDIS_URL and the AWS credentials and Region, when the shell has them, are the shell's."""
    env = {**spec.variables, **shell, **overrides}
    env |= {name: shell[name] for name in MACHINE_VARIABLES if shell.get(name)}
    env.setdefault("AWS_REGION", env.get("AWS_DEFAULT_REGION") or "us-east-1")
    env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
    if spec.code_dir:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (spec.code_dir, env.get("PYTHONPATH")) if p)
    return env | {
        "AWS_SAM_LOCAL": "true",
        "AWS_LAMBDA_FUNCTION_NAME": spec.logical_id,
        "AWS_LAMBDA_FUNCTION_HANDLER": spec.handler,
        "AWS_LAMBDA_FUNCTION_TIMEOUT": f"{spec.timeout_s:g}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.logical_id}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "local",
    }


# -- running it --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    payload: Any  # the handler's return value, or Lambda's error document


def invoke(spec: FunctionSpec, event: Any, env: Mapping[str, str], output: TextIO | None = None) -> Outcome:
    """Run the handler once in a new Python process; its output is copied to ``output``
    (stderr by default) as it comes."""
    request_id = str(uuid.uuid4())
    with tempfile.TemporaryDirectory(prefix="offload-invoke-") as scratch:
        request, answer = Path(scratch, "request.json"), Path(scratch, "answer.json")
        request.write_text(json.dumps({"spec": asdict(spec), "event": event, "request_id": request_id}))
        command = [sys.executable, "-m", "offload.local.invoke", str(request), str(answer)]
        with subprocess.Popen(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as child:
            returncode = _wait(child, output or sys.stderr, spec.timeout_s + INIT_ALLOWANCE_S)
        if answer.is_file():
            return Outcome(**json.loads(answer.read_text()))
    return Outcome(False, _error("Runtime.ExitError", f"Runtime exited with error: exit status {returncode}"))


def _wait(child: subprocess.Popen[str], output: TextIO, timeout_s: float) -> int | None:
    assert child.stdout is not None
    copier = threading.Thread(target=_copy, args=(child.stdout, output), daemon=True)
    copier.start()
    try:
        child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("the function did not finish within %.0f s; killing it", timeout_s)
        child.kill()
        child.wait()
    copier.join(timeout=5)
    return child.returncode


def _copy(source: IO[str], target: TextIO) -> None:
    for line in source:
        target.write(line)
        target.flush()


def _error(error_type: str, message: str, stack: list[str] | None = None) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": error_type, "stackTrace": stack or []}


# -- inside the child process -------------------------------------------------------------


def _child_main(request_path: str, answer_path: str) -> int:
    """Import the handler, call it once with a Lambda context, write the outcome."""
    from offload.local.context import LocalContext

    request = json.loads(Path(request_path).read_text())
    spec = FunctionSpec(**request["spec"])
    answer = Path(answer_path)
    try:
        handler = _import_handler(spec.handler)
        _arm_timeout(spec.timeout_s, answer)
        context = LocalContext(
            function_name=spec.logical_id,
            timeout_s=spec.timeout_s,
            memory_limit_in_mb=spec.memory_mb,
            aws_request_id=request["request_id"],
        )
        outcome = _marshal(handler(request["event"], context))
    except Exception as e:
        traceback.print_exc()
        outcome = Outcome(False, _exception_payload(e))
    signal.setitimer(signal.ITIMER_REAL, 0)
    answer.write_text(json.dumps(asdict(outcome)))
    return 0 if outcome.ok else 1


class _HandlerError(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def _import_handler(name: str) -> Any:
    import importlib

    module_name, _, function = name.rpartition(".")
    if not module_name:
        raise _HandlerError("Runtime.MalformedHandlerName", f"Bad handler '{name}': expected module.function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise _HandlerError("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {e}") from e
    handler = getattr(module, function, None)
    if not callable(handler):
        raise _HandlerError("Runtime.HandlerNotFound", f"Handler '{function}' missing on module '{module_name}'")
    return handler


def _marshal(result: Any) -> Outcome:
    try:
        json.dumps(result)
    except (TypeError, ValueError) as e:
        return Outcome(False, _error("Runtime.MarshalError", f"Unable to marshal response: {e}"))
    return Outcome(True, result)


def _exception_payload(error: Exception) -> dict[str, Any]:
    if isinstance(error, _HandlerError):
        return _error(error.error_type, str(error))
    stack = [frame.rstrip() for frame in traceback.format_tb(error.__traceback__)]
    return _error(type(error).__name__, str(error), stack)


def _arm_timeout(timeout_s: float, answer: Path) -> None:
    """Stop the process when the handler's time is up, as Lambda does."""

    def expire(signum: int, frame: FrameType | None) -> None:
        message = f"Task timed out after {timeout_s:.2f} seconds"
        answer.write_text(json.dumps(asdict(Outcome(False, _error("Sandbox.Timedout", message)))))
        os._exit(1)

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)


if __name__ == "__main__":
    raise SystemExit(_child_main(*sys.argv[1:3]))
