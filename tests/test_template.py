"""template.yaml, as AWS will see it: translated by the SAM translator (offline, no AWS call),
then checked for the properties the design depends on.

Conditions (Stage, AuthorizerMode, RedisMode, ...) survive translation as ``Fn::If``; the
small resolver below evaluates them for one set of parameter values, so every check runs on
the template a given deployment would really get.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore import xform_name
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

from offload.config import Settings

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template.yaml"
SRC = REPO / "src" / "offload"

REQUIRED = {
    "Stage": "staging",
    "WorkerImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/offload-worker:test",
    "VpcId": "vpc-0123456789abcdef0",
    "PrivateSubnetIds": "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
}
POOL = "arn:aws:cognito-idp:us-east-1:123456789012:userpool/us-east-1_Example"

SCENARIOS = {
    "staging-iam-replication": {"Stage": "staging"},
    "prod-iam-serverless": {"Stage": "prod", "RedisMode": "serverless"},
    "prod-jwt-replication": {"Stage": "prod", "AuthorizerMode": "jwt", "CognitoUserPoolArn": POOL},
    "staging-jwt-scopes": {"AuthorizerMode": "jwt", "CognitoUserPoolArn": POOL, "JwtScopes": "offload/jobs"},
}

# component -> the resource whose role it runs as
COMPONENT_ROLE_OWNER = {
    "master": "MasterFunction",
    "callback": "CallbackFunction",
    "compute": "ComputeFunction",
    "worker": "WorkerTaskDefinition",
}

# component -> the modules whose AWS calls run in it (paths below src/offload). The
# extension reads secrets with the function's role, so secret_store counts for master and
# callback too. The worker builds its Lambda client in cli.cmd_worker and dispatch.py calls it.
COMPONENT_MODULES = {
    "master": ("lambdas/master.py", "secret_store.py"),
    "callback": ("lambdas/callback.py", "secret_store.py"),
    "compute": ("lambdas/compute.py", "storage.py"),
    "worker": ("cli.py", "dispatch.py", "secret_store.py"),
}
# modules that make AWS calls only on a developer's machine
LOCAL_ONLY = ("local/",)

# boto3 operations whose IAM action is not "<prefix>:<OperationName>"
IAM_ACTION_EXCEPTIONS = {("lambda", "Invoke"): "lambda:InvokeFunction"}

# actions that AWS does not let a policy scope to a resource
UNSCOPABLE_ACTIONS = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "ecr:GetAuthorizationToken",
    "cloudwatch:PutMetricData",  # scoped by a cloudwatch:namespace condition instead
}


# -- translation and resolution ----------------------------------------------------------


class _NoManagedPolicies:
    """The translator asks for AWS managed policy ARNs by name; this template names none."""

    def load(self) -> dict[str, str]:
        return {}


@cache
def _raw_template() -> dict[str, Any]:
    return dict(yaml_parse(TEMPLATE.read_text()))


@cache
def _translated(params: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    template = copy.deepcopy(_raw_template())
    # the translator needs S3 code locations, as `sam validate` gives it
    template["Globals"]["Function"]["CodeUri"] = "s3://offload-test-bucket/code.zip"
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function" and "CodeUri" in resource.get("Properties", {}):
            resource["Properties"]["CodeUri"] = "s3://offload-test-bucket/code.zip"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        return transform(template, dict(params), _NoManagedPolicies())


_NO_VALUE = object()


@dataclass
class Deployment:
    """The translated template with one set of parameter values applied."""

    overrides: dict[str, str]
    region: str = "us-east-1"
    template: dict[str, Any] = field(init=False)
    params: dict[str, Any] = field(init=False)
    conditions: dict[str, bool] = field(init=False)

    def __post_init__(self) -> None:
        given = {**REQUIRED, **self.overrides}
        self.template = _translated(tuple(sorted(given.items())))
        self.params = {"AWS::Region": self.region, "AWS::Partition": "aws", "AWS::AccountId": "123456789012"}
        for name, spec in self.template["Parameters"].items():
            value = given.get(name, spec.get("Default"))
            if spec["Type"] in ("CommaDelimitedList", "List<AWS::EC2::Subnet::Id>"):
                value = [part.strip() for part in str(value).split(",")]
            self.params[name] = value
        self.conditions = {}
        for name in self.template.get("Conditions", {}):
            self._condition(name)

    def _condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self._value(self.template["Conditions"][name]))
        return self.conditions[name]

    def _value(self, node: Any) -> Any:
        """A condition's or mapping key's value (these use only parameters)."""
        if isinstance(node, dict) and len(node) == 1:
            (fn, arg), *_ = node.items()
            if fn == "Ref":
                return self.params[arg]
            if fn == "Condition":
                return self._condition(arg)
            if fn == "Fn::Equals":
                return self._value(arg[0]) == self._value(arg[1])
            if fn == "Fn::Not":
                return not self._value(arg[0])
            if fn == "Fn::And":
                return all(self._value(a) for a in arg)
            if fn == "Fn::Or":
                return any(self._value(a) for a in arg)
            if fn == "Fn::Join":
                return arg[0].join(str(v) for v in self._value(arg[1]))
            if fn == "Fn::FindInMap":
                name, key, attr = (self._value(a) for a in arg)
                return self.template["Mappings"][name][key][attr]
        if isinstance(node, list):
            return [self._value(v) for v in node]
        return node

    def resolve(self, node: Any) -> Any:
        """``node`` with Fn::If decided, AWS::NoValue dropped, and parameter Refs and
        FindInMap replaced by values; other intrinsics (GetAtt, Sub, resource Refs) stay."""
        result = self._resolve(node)
        return None if result is _NO_VALUE else result

    def _resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self._resolve(item) for item in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), *_ = node.items()
            if fn == "Fn::If":
                return self._resolve(arg[1] if self._condition(arg[0]) else arg[2])
            if fn == "Ref" and arg == "AWS::NoValue":
                return _NO_VALUE
            if fn == "Ref" and arg in self.params:
                return self.params[arg]
            if fn == "Fn::FindInMap":
                return self._value({fn: [self._resolve(a) for a in arg]})
        return {k: v for k, v in ((k, self._resolve(v)) for k, v in node.items()) if v is not _NO_VALUE}

    def resources(self, type_: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, resource in self.template["Resources"].items():
            if "Condition" in resource and not self._condition(resource["Condition"]):
                continue
            if type_ is None or resource["Type"] == type_:
                yield name, self.resolve(resource)

    def resource(self, name: str) -> dict[str, Any]:
        found = dict(self.resources())
        assert name in found, f"{name} is not in this deployment"
        return found[name]

    def props(self, name: str) -> dict[str, Any]:
        return dict(self.resource(name).get("Properties", {}))

    # -- components --------------------------------------------------------------------

    def role_of(self, component: str) -> str:
        owner = COMPONENT_ROLE_OWNER[component]
        props = self.props(owner)
        role = props["TaskRoleArn"] if "TaskRoleArn" in props else props["Role"]
        assert set(role) == {"Fn::GetAtt"}, f"{owner}'s role should be a role of this stack: {role}"
        return str(role["Fn::GetAtt"][0])

    def env_of(self, component: str) -> dict[str, Any]:
        props = self.props(COMPONENT_ROLE_OWNER[component])
        if "ContainerDefinitions" in props:
            (worker,) = [c for c in props["ContainerDefinitions"] if c["Name"] == "worker"]
            return {e["Name"]: e["Value"] for e in worker["Environment"]}
        return dict(props.get("Environment", {}).get("Variables", {}))

    def statements_of_role(self, role: str) -> list[dict[str, Any]]:
        statements = []
        for policy in self.props(role).get("Policies", []):
            statements += _as_list(policy["PolicyDocument"]["Statement"])
        for _, policy in self.resources("AWS::IAM::Policy"):
            if {"Ref": role} in policy["Properties"].get("Roles", []):
                statements += _as_list(policy["Properties"]["PolicyDocument"]["Statement"])
        return statements

    def allows(self, role: str, action: str, resource: Any = None) -> bool:
        for statement in self.statements_of_role(role):
            if statement["Effect"] != "Allow":
                continue
            if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _as_list(statement["Action"])):
                continue
            if resource is None or resource in _as_list(statement["Resource"]):
                return True
        return False

    def resources_allowed(self, role: str, action: str) -> list[Any]:
        found: list[Any] = []
        for statement in self.statements_of_role(role):
            if statement["Effect"] == "Allow" and action in _as_list(statement["Action"]):
                found += _as_list(statement["Resource"])
        return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def deployment(request: pytest.FixtureRequest) -> Deployment:
    return Deployment(SCENARIOS[request.param])


@pytest.fixture(scope="module")
def staging() -> Deployment:
    return Deployment({"Stage": "staging"})


@pytest.fixture(scope="module")
def prod() -> Deployment:
    return Deployment({"Stage": "prod"})


# -- the API: who may call which route -----------------------------------------------------


def _operations(d: Deployment) -> dict[tuple[str, str], dict[str, Any]]:
    (_, api), *others = list(d.resources("AWS::ApiGateway::RestApi"))
    assert not others, "one REST API"
    body = api["Properties"]["Body"]
    assert "security" not in body, "no API-wide security: each route names its own"
    return {(path, method.upper()): op for path, item in body["paths"].items() for method, op in item.items()}


def _schemes(d: Deployment) -> dict[str, Any]:
    (_, api), *_ = list(d.resources("AWS::ApiGateway::RestApi"))
    return dict(api["Properties"]["Body"]["components"]["securitySchemes"])


def test_api_is_rest_with_tracing_and_exactly_three_routes(deployment: Deployment) -> None:
    assert set(_operations(deployment)) == {
        ("/jobs", "POST"),
        ("/jobs/{job_id}", "GET"),
        ("/callbacks/{job_id}", "POST"),
    }
    (_, stage), *_ = list(deployment.resources("AWS::ApiGateway::Stage"))
    assert stage["Properties"]["TracingEnabled"] is True
    assert stage["Properties"]["StageName"] == deployment.params["Stage"]
    # routes live only in the OpenAPI body, never as separately authorised Method resources
    assert not list(deployment.resources("AWS::ApiGateway::Method"))
    assert "Auth" not in deployment.resolve(_raw_template()["Resources"]["Api"]["Properties"])


def test_every_route_requires_authentication_and_only_the_intended_authorizer(deployment: Deployment) -> None:
    schemes = _schemes(deployment)
    assert schemes["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    jwt = deployment.params["AuthorizerMode"] == "jwt"
    scopes = [s for s in deployment.params["JwtScopes"] if s]
    for (path, method), op in _operations(deployment).items():
        security = op.get("security")
        assert security, f"{method} {path} has no authorizer"
        if path.startswith("/callbacks/"):
            assert security == [{"sigv4": []}], "the callback route is AWS_IAM (SigV4) and nothing else"
        elif jwt:
            assert security == [{"CognitoUserPool": scopes}], f"{method} {path}: AuthorizerMode=jwt"
        else:
            assert security == [{"sigv4": []}], f"{method} {path}: IAM by default"
    if jwt:
        cognito = schemes["CognitoUserPool"]
        assert cognito["x-amazon-apigateway-authtype"] == "cognito_user_pools"
        assert cognito["x-amazon-apigateway-authorizer"]["providerARNs"] == [POOL]
    else:
        assert set(schemes) == {"sigv4"}, "no authorizer is created that no route uses"


def test_routes_reach_the_right_functions_and_only_from_their_route(staging: Deployment) -> None:
    expected = {("/jobs", "POST"): "MasterFunction", ("/jobs/{job_id}", "GET"): "MasterFunction",
                ("/callbacks/{job_id}", "POST"): "CallbackFunction"}  # fmt: skip
    for route, op in _operations(staging).items():
        integration = op["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy"
        assert f"${{{expected[route]}.Arn}}" in integration["uri"]["Fn::Sub"]

    granted = {}
    for _, permission in staging.resources("AWS::Lambda::Permission"):
        props = permission["Properties"]
        assert props["Principal"] == "apigateway.amazonaws.com"
        granted[props["SourceArn"]["Fn::Sub"].rsplit("/*/", 1)[1]] = props["FunctionName"]["Ref"]
    assert granted == {"POST/jobs": "MasterFunction", "GET/jobs/*": "MasterFunction",
                       "POST/callbacks/*": "CallbackFunction"}  # fmt: skip


# -- the compute function's asynchronous invocation ----------------------------------------


def test_compute_retries_are_bounded_and_failures_go_to_the_callback(deployment: Deployment) -> None:
    configs = {
        c["Properties"]["FunctionName"]["Ref"]: c for _, c in deployment.resources("AWS::Lambda::EventInvokeConfig")
    }
    assert set(configs) == {"ComputeFunction", "CallbackFunction"}
    props = configs["ComputeFunction"]["Properties"]
    assert 0 <= props["MaximumRetryAttempts"] <= 2
    # every event Lambda still delivers carries a token that has not expired
    token_lifetime = float(deployment.params["SliceTimeoutSeconds"]) + Settings().callback_token_grace_s
    assert 60 <= props["MaximumEventAgeInSeconds"] <= min(3600, token_lifetime)
    assert props["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["CallbackFunction", "Arn"]}
    # the destination is invoked asynchronously too: its retries are bounded the same way
    callback = configs["CallbackFunction"]["Properties"]
    assert 0 <= callback["MaximumRetryAttempts"] <= 2
    assert callback["MaximumEventAgeInSeconds"] <= min(3600, token_lifetime)
    # Lambda delivers the OnFailure record with the compute function's role
    assert deployment.allows(deployment.role_of("compute"), "lambda:InvokeFunction",
                             {"Fn::GetAtt": ["CallbackFunction", "Arn"]})  # fmt: skip


def test_functions_handlers_network_and_platform(deployment: Deployment) -> None:
    handlers = {"MasterFunction": "offload.lambdas.master.handler",
                "CallbackFunction": "offload.lambdas.callback.handler",
                "ComputeFunction": "offload.lambdas.compute.handler"}  # fmt: skip
    functions = dict(deployment.resources("AWS::Lambda::Function"))
    assert set(functions) == set(handlers)
    for name, function in functions.items():
        props = function["Properties"]
        assert props["Handler"] == handlers[name]
        assert props["Runtime"] == "python3.12" and props["Architectures"] == ["arm64"]
        assert props["TracingConfig"] == {"Mode": "Active"}
        module = REPO / "src" / Path(*handlers[name].split(".")[:-1]).with_suffix(".py")
        assert module.exists(), f"{name}'s handler module {module.relative_to(REPO)} is missing"
    # Redis is in the VPC; the compute function stays out (S3 and the public callback API only)
    for name in ("MasterFunction", "CallbackFunction"):
        assert functions[name]["Properties"]["VpcConfig"]["SecurityGroupIds"] == [{"Ref": "FunctionSecurityGroup"}]
    assert "VpcConfig" not in functions["ComputeFunction"]["Properties"]


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_in_vpc_functions_read_secrets_through_the_extension(region: str) -> None:
    d = Deployment({}, region=region)
    for name in ("MasterFunction", "CallbackFunction"):
        props = d.props(name)
        (layer,) = props["Layers"]
        assert re.fullmatch(
            rf"arn:aws:lambda:{region}:\d{{12}}:layer:AWS-Parameters-and-Secrets-Lambda-Extension-Arm64:\d+", layer
        )
        assert props["Environment"]["Variables"]["PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"] == "2773"
    assert "Layers" not in d.props("ComputeFunction")


def test_the_extension_can_be_left_out_for_sam_local() -> None:
    d = Deployment({"SecretsExtensionLayerArn": "none"})
    for name in ("MasterFunction", "CallbackFunction"):
        assert not d.props(name).get("Layers")
        assert d.props(name)["Environment"]["Variables"]["PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"] == ""


@pytest.mark.parametrize("function", ["master", "callback"])
def test_master_and_callback_load_without_boto3(function: str) -> None:
    """Imported in a fresh interpreter, as Lambda does at a cold start (no AWS call is made)."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO / "src"), "AWS_REGION": "us-east-1",
           "REDIS_URL": "redis://127.0.0.1:9/0"}  # fmt: skip
    code = f"import sys, offload.lambdas.{function}; print(','.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "boto3" not in result.stdout.strip().split(","), f"{function} imports boto3 when it loads"


def test_master_and_callback_never_import_boto3_at_module_level() -> None:
    """They run behind the API: boto3 would double their cold start (secret_store.py)."""
    for module in ("lambdas/master.py", "lambdas/callback.py"):
        for closure_module in _module_level_import_closure(module):
            tree = ast.parse((SRC / closure_module).read_text())
            for node in tree.body:
                names = _imported_modules(node)
                assert not any(n.split(".")[0] in ("boto3", "botocore") for n in names), (
                    f"{module} imports boto3/botocore at module level through {closure_module}"
                )


# -- least privilege -------------------------------------------------------------------------


def _all_statements(d: Deployment) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resource in d.resources():
        props = resource.get("Properties", {})
        documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        if "PolicyDocument" in props:
            documents.append(props["PolicyDocument"])
        if "AssumeRolePolicyDocument" in props:
            documents.append(props["AssumeRolePolicyDocument"])
        for document in documents:
            for statement in _as_list(document["Statement"]):
                yield name, statement


def test_no_allow_statement_has_a_wildcard_action(deployment: Deployment) -> None:
    statements = list(_all_statements(deployment))
    assert len(statements) > 10
    for owner, statement in statements:
        assert "NotAction" not in statement and "NotResource" not in statement, owner
        if statement["Effect"] == "Deny":
            continue  # a Deny takes access away (the buckets' TLS-only rule denies s3:*)
        for action in _as_list(statement["Action"]):
            assert "*" not in action, f"{owner} allows the wildcard action {action!r}"


def test_resource_star_only_where_aws_allows_nothing_narrower(deployment: Deployment) -> None:
    for owner, statement in _all_statements(deployment):
        if statement["Effect"] == "Allow" and "*" in _as_list(statement.get("Resource", [])):
            extra = set(_as_list(statement["Action"])) - UNSCOPABLE_ACTIONS
            assert not extra, f"{owner} allows {sorted(extra)} on every resource"


def test_put_metric_data_if_granted_is_limited_to_the_offload_namespace(deployment: Deployment) -> None:
    # The metrics are EMF log lines (observability.py), so no role needs PutMetricData today;
    # test_each_role_allows_only_what_its_component_does keeps it that way until the code calls it.
    for owner, statement in _all_statements(deployment):
        if "cloudwatch:PutMetricData" in _as_list(statement.get("Action", [])):
            assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "offload"}}, owner


def test_in_vpc_functions_get_only_the_aws_vpc_execution_policy(deployment: Deployment) -> None:
    vpc_policy = "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
    for component in COMPONENT_ROLE_OWNER:
        arns = deployment.props(deployment.role_of(component)).get("ManagedPolicyArns", [])
        expected = [{"Fn::Sub": vpc_policy}] if component in ("master", "callback") else []
        assert arns == expected, f"{component}: managed policies {arns}"


def _boto3_services(tree: ast.AST) -> set[str]:
    services = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "client"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "boto3"
        ):
            arg = node.args[0] if node.args else None
            assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), "boto3.client() with a literal name"
            services.add(arg.value)
    return services


def _attribute_calls(tree: ast.AST) -> set[str]:
    return {
        node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }


@cache
def _service(name: str) -> tuple[str, dict[str, str]]:
    model = botocore.session.get_session().get_service_model(name)
    return model.signing_name, {xform_name(op): op for op in model.operation_names}


def _required_actions(component: str) -> set[str]:
    trees = [ast.parse((SRC / module).read_text()) for module in COMPONENT_MODULES[component]]
    services = set().union(*(_boto3_services(t) for t in trees))
    if component == "worker":
        services.add("lambda")  # dispatch.LambdaInvoker is handed cli.cmd_worker's boto3.client("lambda")
    # a method the project defines itself (Invoker.invoke_async) is not an AWS operation
    defined = {n.name for t in trees for n in ast.walk(t) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    calls = set().union(*(_attribute_calls(t) for t in trees)) - defined
    actions = set()
    for service in services:
        prefix, operations = _service(service)
        for method in calls & set(operations):
            op = operations[method]
            actions.add(IAM_ACTION_EXCEPTIONS.get((service, op), f"{prefix}:{op}"))
    return actions


def test_every_module_that_calls_aws_belongs_to_a_component() -> None:
    mapped = {m for modules in COMPONENT_MODULES.values() for m in modules}
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        if module.startswith(LOCAL_ONLY):
            continue
        if _boto3_services(ast.parse(path.read_text())):
            assert module in mapped, f"{module} calls AWS: add it to COMPONENT_MODULES (and its role)"


@pytest.mark.parametrize("component", sorted(COMPONENT_MODULES))
def test_every_aws_call_is_allowed_by_the_callers_role(deployment: Deployment, component: str) -> None:
    required = _required_actions(component)
    # the scan must find what the code is known to do, or it proves nothing
    assert (
        required
        >= {
            "master": {"secretsmanager:GetSecretValue"},
            "callback": {"secretsmanager:GetSecretValue"},
            "compute": {"s3:GetObject", "s3:PutObject"},
            "worker": {"lambda:InvokeFunction", "secretsmanager:GetSecretValue"},
        }[component]
    )
    role = deployment.role_of(component)
    for action in sorted(required):
        assert deployment.allows(role, action), f"{component} calls {action} but {role} does not allow it"


# what a role may do beyond the AWS calls the scan finds in its component's code, and why
JUSTIFIED = {
    "master": {"xray:PutTraceSegments": "Tracing: Active", "xray:PutTelemetryRecords": "Tracing: Active"},
    "callback": {"xray:PutTraceSegments": "Tracing: Active", "xray:PutTelemetryRecords": "Tracing: Active"},
    "compute": {
        "xray:PutTraceSegments": "Tracing: Active",
        "xray:PutTelemetryRecords": "Tracing: Active",
        "logs:CreateLogStream": "its log group (no VPC policy brings the logs permissions)",
        "logs:PutLogEvents": "its log group, and the EMF metrics in it",
        "execute-api:Invoke": "the SigV4-signed POST /callbacks (urllib, not boto3)",
        "lambda:InvokeFunction": "Lambda delivers the OnFailure record to the callback function as this role",
    },
    "worker": {"xray:PutTraceSegments": "the ADOT sidecar", "xray:PutTelemetryRecords": "the ADOT sidecar"},
}


def test_each_role_allows_only_what_its_component_does(deployment: Deployment) -> None:
    for component in COMPONENT_ROLE_OWNER:
        allowed = set()
        for statement in deployment.statements_of_role(deployment.role_of(component)):
            if statement["Effect"] == "Allow":
                allowed |= set(_as_list(statement["Action"]))
        expected = _required_actions(component) | set(JUSTIFIED[component])
        assert allowed == expected, f"{component}: unexplained {sorted(allowed - expected)}"


def test_each_role_reads_exactly_the_secrets_named_in_its_environment(deployment: Deployment) -> None:
    for component in COMPONENT_ROLE_OWNER:
        env = deployment.env_of(component)
        named = [v for k, v in env.items() if k.endswith("_SECRET_ARN")]
        readable = deployment.resources_allowed(deployment.role_of(component), "secretsmanager:GetSecretValue")
        assert sorted(map(str, readable)) == sorted(map(str, named)), component
    assert deployment.env_of("compute").keys().isdisjoint({"REDIS_AUTH_SECRET_ARN", "OFFLOAD_CALLBACK_SECRET_ARN"})


def test_compute_may_call_only_the_callback_route(deployment: Deployment) -> None:
    # compute.deliver() signs its POST with SigV4 (signing.sign): API Gateway checks execute-api:Invoke
    assert "signing.sign(" in (SRC / "lambdas" / "compute.py").read_text()
    role = deployment.role_of("compute")
    (resource,) = deployment.resources_allowed(role, "execute-api:Invoke")
    assert resource == {
        "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/${Stage}/POST/callbacks/*"
    }
    for component in ("master", "callback", "worker"):
        assert not deployment.resources_allowed(deployment.role_of(component), "execute-api:Invoke"), component


def test_compute_reads_the_allowed_buckets_and_writes_only_outputs(deployment: Deployment) -> None:
    env = deployment.env_of("compute")
    role = deployment.role_of("compute")
    buckets = re.findall(r"\$\{(\w+)\}", env["OFFLOAD_ALLOWED_BUCKETS"]["Fn::Sub"])
    assert buckets == ["InputBucket", "OutputBucket"]
    readable = deployment.resources_allowed(role, "s3:GetObject")
    assert sorted(r["Fn::Sub"] for r in readable) == sorted(f"${{{b}.Arn}}/*" for b in buckets)
    assert env["OFFLOAD_OUTPUT_URI"] == {"Fn::Sub": "s3://${OutputBucket}/thumbnails"}
    assert deployment.resources_allowed(role, "s3:PutObject") == [{"Fn::Sub": "${OutputBucket.Arn}/thumbnails/*"}]
    assert env["OFFLOAD_INPUT_ROOT"] == "", "file:// inputs are refused in AWS"


def test_the_worker_invokes_only_the_compute_function(deployment: Deployment) -> None:
    role = deployment.role_of("worker")
    assert deployment.resources_allowed(role, "lambda:InvokeFunction") == [{"Fn::GetAtt": ["ComputeFunction", "Arn"]}]
    for component in ("master", "callback"):
        assert not deployment.resources_allowed(deployment.role_of(component), "lambda:InvokeFunction")


# -- configuration the code reads --------------------------------------------------------------


def _names_read_by_the_code() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        if not path.relative_to(SRC).as_posix().startswith(LOCAL_ONLY):
            names |= set(re.findall(r"[\"']((?:OFFLOAD|REDIS|PARAMETERS_SECRETS)_[A-Z0-9_]+)[\"']", path.read_text()))
    return names


# names the template sets for the code to read that it does not read yet, with the reason
NOT_READ_YET: dict[str, str] = {}


def test_every_offload_setting_in_the_template_is_one_the_code_reads(deployment: Deployment) -> None:
    known = _names_read_by_the_code() | set(NOT_READ_YET)
    for component in COMPONENT_ROLE_OWNER:
        for name in deployment.env_of(component):
            if name.startswith(("OFFLOAD_", "REDIS_", "PARAMETERS_SECRETS_")):
                assert name in known, f"{component} sets {name}, which nothing in src/offload reads (a typo?)"


def test_each_component_gets_the_settings_it_needs_in_aws(deployment: Deployment) -> None:
    needs = {
        "master": {"REDIS_URL", "REDIS_AUTH_SECRET_ARN", "OFFLOAD_QUEUE", "OFFLOAD_MAX_BACKLOG"},
        "callback": {"REDIS_URL", "REDIS_AUTH_SECRET_ARN", "OFFLOAD_QUEUE", "OFFLOAD_CALLBACK_SECRET_ARN"},
        "compute": {"OFFLOAD_OUTPUT_URI", "OFFLOAD_ALLOWED_BUCKETS"},
        "worker": {"REDIS_URL", "REDIS_AUTH_SECRET_ARN", "OFFLOAD_QUEUE", "OFFLOAD_CALLBACK_SECRET_ARN",
                   "OFFLOAD_CALLBACK_BASE_URL", "OFFLOAD_COMPUTE_FUNCTION"},
    }  # fmt: skip
    common = {"OFFLOAD_STAGE", "OFFLOAD_QUEUE", "POWERTOOLS_METRICS_NAMESPACE", "LOG_LEVEL"}
    for component, names in needs.items():
        env = deployment.env_of(component)
        missing = (names | common) - set(env)
        assert not missing, f"{component} lacks {sorted(missing)}"
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "offload"
        assert env["OFFLOAD_STAGE"] == deployment.params["Stage"] and env["OFFLOAD_QUEUE"] == "default"
        # it would add a `service` dimension to every metric, and no alarm would match them
        assert "POWERTOOLS_SERVICE_NAME" not in env, component
        if "REDIS_URL" in env:
            assert env["REDIS_URL"]["Fn::Sub"][0] == "rediss://${Host}:${Port}/0", "TLS to ElastiCache"
        assert env.get("OFFLOAD_CALLBACK_SECRET", "") == "", "in AWS the key comes from Secrets Manager"
    assert deployment.env_of("worker")["OFFLOAD_CALLBACK_BASE_URL"] == {
        "Fn::Sub": "https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${Stage}"
    }
    assert deployment.env_of("worker")["OFFLOAD_COMPUTE_FUNCTION"] == {"Ref": "ComputeFunction"}


# -- Redis -------------------------------------------------------------------------------------


def test_redis_replication_group_per_stage(staging: Deployment, prod: Deployment) -> None:
    for d, nodes, multi_az in ((staging, 2, True), (prod, 3, True)):
        props = d.props("RedisReplicationGroup")
        assert props["TransitEncryptionEnabled"] is True and props["AtRestEncryptionEnabled"] is True
        assert props["AuthToken"] == {"Fn::Sub": "{{resolve:secretsmanager:${RedisAuthSecret}:SecretString:token}}"}
        assert props["NumCacheClusters"] == nodes
        assert props["MultiAZEnabled"] is multi_az and props["AutomaticFailoverEnabled"] is multi_az
        assert props["SecurityGroupIds"] == [{"Ref": "RedisSecurityGroup"}]
        assert d.props("RedisParameterGroup")["Properties"]["maxmemory-policy"] == "noeviction"
        assert d.props("RedisParameterGroup")["Properties"]["hash-max-listpack-value"] == "1024"
        assert not any(n.startswith("RedisServerless") for n, _ in d.resources())


def test_redis_serverless_mode() -> None:
    d = Deployment({"Stage": "prod", "RedisMode": "serverless"})
    props = d.props("RedisServerless")
    assert props["SecurityGroupIds"] == [{"Ref": "RedisSecurityGroup"}]
    assert props["UserGroupId"] == {"Ref": "RedisUserGroup"}
    user = d.props("RedisDefaultUser")
    assert user["UserName"] == "default"  # so the code's AUTH <token> works unchanged
    assert user["AuthenticationMode"]["Passwords"] == [
        {"Fn::Sub": "{{resolve:secretsmanager:${RedisAuthSecret}:SecretString:token}}"}
    ]
    assert not any(n in ("RedisReplicationGroup", "RedisSubnetGroup") for n, _ in d.resources())


def test_redis_accepts_6379_only_from_the_functions_and_the_worker(deployment: Deployment) -> None:
    assert "SecurityGroupIngress" not in deployment.props("RedisSecurityGroup")
    sources = set()
    for _, rule in deployment.resources("AWS::EC2::SecurityGroupIngress"):
        props = rule["Properties"]
        if props["GroupId"] == {"Ref": "RedisSecurityGroup"}:
            assert (props["IpProtocol"], props["FromPort"], props["ToPort"]) == ("tcp", 6379, 6379)
            assert "CidrIp" not in props
            sources.add(props["SourceSecurityGroupId"]["Ref"])
    assert sources == {"FunctionSecurityGroup", "WorkerSecurityGroup"}


# -- the worker --------------------------------------------------------------------------------


def test_worker_task_and_service(deployment: Deployment) -> None:
    task = deployment.props("WorkerTaskDefinition")
    assert task["RuntimePlatform"] == {"CpuArchitecture": "ARM64", "OperatingSystemFamily": "LINUX"}
    assert task["RequiresCompatibilities"] == ["FARGATE"] and task["NetworkMode"] == "awsvpc"
    containers = {c["Name"]: c for c in task["ContainerDefinitions"]}
    worker = containers["worker"]
    assert worker["Image"] == deployment.params["WorkerImageUri"] and worker["Command"] == ["worker"]
    grace = float(deployment.env_of("worker")["OFFLOAD_SHUTDOWN_GRACE_S"])
    assert grace + 10 <= worker["StopTimeout"] <= 120, "ECS waits StopTimeout after SIGTERM, then SIGKILLs"
    assert worker["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "WorkerLogGroup"}
    collector = containers["otel-collector"]
    assert collector["Image"].startswith("public.ecr.aws/aws-observability/aws-otel-collector:")
    assert collector["Essential"] is False
    config = yaml.safe_load(next(e["Value"] for e in collector["Environment"] if e["Name"] == "AOT_CONFIG_CONTENT"))
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and pipeline["exporters"] == ["awsxray"]
    # the worker's exporter (worker_tracing.py) speaks the protocol the sidecar listens on, at its address
    protocol = "http" if "otlp.proto.http" in (SRC / "worker_tracing.py").read_text() else "grpc"
    endpoint = config["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
    assert endpoint.startswith("127.0.0.1:"), "loopback only"
    assert deployment.env_of("worker")["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{endpoint}"
    assert (
        deployment.env_of("worker")["OTEL_EXPORTER_OTLP_PROTOCOL"]
        == {"http": "http/protobuf", "grpc": "grpc"}[protocol]
    )

    service = deployment.props("WorkerService")
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    assert network["Subnets"] == deployment.params["PrivateSubnetIds"]
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    assert "DesiredCount" not in service, "auto scaling owns the count"
    cluster = deployment.props("WorkerCluster")
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]
    for _, group in deployment.resources("AWS::Logs::LogGroup"):
        assert group["Properties"]["RetentionInDays"] > 0


def test_worker_scales_on_backlog_per_worker(staging: Deployment, prod: Deployment) -> None:
    for d, low, high in ((staging, 1, 3), (prod, 2, 20)):
        target = d.props("WorkerScalableTarget")
        assert (target["MinCapacity"], target["MaxCapacity"]) == (low, high)
        policy = d.props("WorkerScalingPolicy")
        metric = policy["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
        assert (metric["Namespace"], metric["MetricName"], metric["Statistic"]) == (
            "offload",
            "BacklogPerWorker",
            "Average",
        )
        assert metric["Dimensions"] == [
            {"Name": "stage", "Value": d.params["Stage"]},
            {"Name": "queue", "Value": "default"},
        ]


# -- alarms ------------------------------------------------------------------------------------


def test_alarms(deployment: Deployment) -> None:
    alarms = [p["Properties"] for _, p in deployment.resources("AWS::CloudWatch::Alarm")]

    def alarm(namespace: str, metric: str, dimensions: list[dict[str, Any]]) -> dict[str, Any]:
        (found,) = [
            a for a in alarms if (a["Namespace"], a["MetricName"], a["Dimensions"]) == (namespace, metric, dimensions)
        ]
        return found

    queue = [{"Name": "stage", "Value": deployment.params["Stage"]}, {"Name": "queue", "Value": "default"}]
    dead = alarm("offload", "DeadLetterDepth", queue)
    assert (dead["ComparisonOperator"], dead["Threshold"]) == ("GreaterThanThreshold", 0)
    oldest = alarm("offload", "OldestQueuedAgeSeconds", queue)
    assert (oldest["ComparisonOperator"], oldest["Threshold"]) == (
        "GreaterThanThreshold",
        deployment.params["OldestJobAlarmSeconds"],
    )
    heartbeat = alarm("offload", "WorkerHeartbeat", queue)
    assert (heartbeat["Statistic"], heartbeat["Period"], heartbeat["EvaluationPeriods"]) == ("Sum", 300, 1)
    assert (heartbeat["ComparisonOperator"], heartbeat["Threshold"]) == ("LessThanThreshold", 1)
    assert heartbeat["TreatMissingData"] == "breaching", "no heartbeat data at all is the worst case"
    compute = [{"Name": "FunctionName", "Value": {"Ref": "ComputeFunction"}}]
    for metric in ("Errors", "Throttles", "DestinationDeliveryFailures"):
        found = alarm("AWS/Lambda", metric, compute)
        assert (found["ComparisonOperator"], found["Threshold"]) == ("GreaterThanThreshold", 0), metric
    for found in alarms:
        assert found["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_dashboard_shows_job_flow_backlog_and_failures(staging: Deployment) -> None:
    body = staging.props("Dashboard")["DashboardBody"]["Fn::Sub"][0]
    metrics = ["JobsAccepted", "JobsSucceeded", "JobsDeadLettered", "JobsRetried", "QueueDepth"]
    metrics += ["OldestQueuedAgeSeconds", "BacklogPerWorker", "DeadLetterDepth", "DestinationDeliveryFailures"]
    for metric in metrics:
        assert f'"{metric}"' in body, metric


def test_outputs(staging: Deployment) -> None:
    assert {"ApiUrl", "CallbackBaseUrl", "ComputeFunctionName", "WorkerClusterName", "RedisEndpoint",
            "AlarmTopicArn"} <= set(staging.template["Outputs"])  # fmt: skip


# -- import helpers ------------------------------------------------------------------------------


def _imported_modules(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def _module_level_import_closure(module: str) -> set[str]:
    """The src/offload modules importing ``module`` imports at module level, itself included."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for node in ast.parse((SRC / current).read_text()).body:
            for name in _imported_modules(node):
                if name == "offload" or not name.startswith("offload."):
                    continue
                parts = name.split(".")[1:]
                for candidate in (Path(*parts).with_suffix(".py"), Path(*parts) / "__init__.py"):
                    if (SRC / candidate).exists():
                        todo.append(candidate.as_posix())
    return seen
