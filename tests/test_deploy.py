"""The Dockerfile, compose.yaml and deploy/ run real ``depot`` commands with real settings.

No Docker engine is needed: the files are parsed, and each command line is
handed to the click group that ``depot`` runs, so a renamed subcommand, option
or setting breaks these tests instead of a deployment.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from api.cli import main
from core.settings import ENV_PREFIX, Settings, load_settings
from storage.s3 import parse_s3_url
from tests import kustomize

ROOT = Path(__file__).resolve().parent.parent
ONE_SHOT = {"migrate", "create-bucket"}
"""Services that run to completion; the others stay up and report their health."""
BACKGROUND = {"worker", "scheduler"}
"""Services that stay up without serving a port: the image's HTTP healthcheck is not theirs."""

EXPECTED_COMMANDS = {
    "api": "depot serve",
    "migrate": "depot migrate upgrade",
    "worker": "depot worker",
    "scheduler": "depot scheduler",
}
"""The subcommand each service built from the Dockerfile runs."""


@functools.cache
def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _depot_services() -> list[str]:
    """The services that run the image built from the Dockerfile."""
    return [name for name, service in _services().items() if "build" in service]


def _words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else command


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, written either as a mapping or as KEY=value lines."""
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(line.partition("=")[::2] for line in environment)
    return {name: str(value) for name, value in environment.items()}


@functools.cache
def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments) pairs."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.partition(" ")[::2] for line in lines if line and not line.startswith("#")]
    return [(instruction.upper(), arguments.strip()) for instruction, arguments in pairs]


def _final_stage(instruction: str) -> list[str]:
    """The arguments of each ``instruction`` in the stage that becomes the image."""
    instructions = _dockerfile()
    start = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return [arguments for name, arguments in instructions[start:] if name == instruction]


def _depot_command(words: Sequence[str], path: str) -> dict[str, Any]:
    """Check that ``words`` run the subcommand ``path`` with valid options; return its params.

    ``--help`` shows how click resolves the words (and rejects unknown options
    at every level); parsing the rest with the subcommand itself then converts
    every value and requires every argument, without running anything.
    """
    assert words[0] == "depot", f"{shlex.join(words)} does not run depot"
    result = CliRunner().invoke(main, [*words[1:], "--help"], prog_name="depot")
    assert result.exit_code == 0, f"{shlex.join(words)}:\n{result.output}"
    assert result.output.startswith(f"Usage: {path} "), result.output
    names = path.split()
    command: click.Command = main
    for name in names[1:]:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    try:
        with command.make_context(path, list(words[len(names) :])) as context:
            return dict(context.params)
    except click.ClickException as exc:
        raise AssertionError(f"{shlex.join(words)}: {exc.format_message()}") from exc


def _healthcheck(service: dict[str, Any]) -> list[str]:
    """The service's healthcheck command, or [] if it has none."""
    healthcheck = service.get("healthcheck") or {}
    if healthcheck.get("disable"):
        return []
    return _words(healthcheck.get("test", []))


def _dockerfile_cmd() -> list[str]:
    (cmd,) = _final_stage("CMD")
    words: list[str] = json.loads(cmd)  # exec form: no shell between Docker and depot
    return words


def _assert_real_settings(names: Sequence[str]) -> None:
    known = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    depot_names = {name for name in names if name.startswith(ENV_PREFIX)}
    assert depot_names, "no DEPOT_* variable found"
    assert depot_names <= known, f"not Depot settings: {sorted(depot_names - known)}"


def test_every_depot_service_has_an_expected_command() -> None:
    assert set(_depot_services()) == set(EXPECTED_COMMANDS)


@pytest.mark.parametrize(("name", "path"), EXPECTED_COMMANDS.items())
def test_depot_services_run_a_real_depot_command(name: str, path: str) -> None:
    _depot_command(_words(_services()[name]["command"]), path)


@pytest.mark.parametrize(
    ("words", "path"),
    [
        (["depot", "serve", "--bogus"], "depot serve"),
        (["depot", "serve", "--port", "http"], "depot serve"),
        (["depot", "migrate", "upgrad"], "depot migrate upgrade"),
        (["depot", "migrate", "downgrade"], "depot migrate downgrade"),
        (["depot", "migrate", "upgrade"], "depot serve"),
        (["depot", "worker", "--threads", "0"], "depot worker"),
        (["depot", "scheduler", "--interval", "5"], "depot scheduler"),
        (["depot", "schedule"], "depot scheduler"),
    ],
)
def test_the_command_check_rejects_broken_commands(words: list[str], path: str) -> None:
    with pytest.raises(AssertionError):
        _depot_command(words, path)


@pytest.mark.parametrize("name", list(_services()))
def test_long_running_services_report_their_health(name: str) -> None:
    has_healthcheck = bool(_healthcheck(_services()[name]))
    assert has_healthcheck is (name not in ONE_SHOT | BACKGROUND)


@pytest.mark.parametrize("name", sorted(BACKGROUND))
def test_background_services_turn_the_images_healthcheck_off(name: str) -> None:
    # Left unset, the Dockerfile's HEALTHCHECK (the api's port) would mark them unhealthy.
    assert _services()[name]["healthcheck"] == {"disable": True}


@pytest.mark.parametrize("name", list(_services()))
def test_services_wait_until_their_dependencies_are_ready(name: str) -> None:
    for dependency, options in _services()[name].get("depends_on", {}).items():
        expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
        assert options["condition"] == expected, f"{name} -> {dependency}"


@pytest.mark.parametrize(
    ("name", "dependencies"),
    [
        ("api", {"postgres", "redis", "migrate", "minio", "create-bucket"}),
        ("worker", {"postgres", "redis", "migrate", "minio", "create-bucket"}),
        ("scheduler", {"postgres", "redis", "migrate", "minio", "create-bucket"}),
        ("migrate", {"postgres"}),
        ("create-bucket", {"minio"}),
    ],
)
def test_services_depend_on_what_they_use(name: str, dependencies: set[str]) -> None:
    assert dependencies <= set(_services()[name]["depends_on"])


def _outside_images() -> list[str]:
    return [name for name, service in _services().items() if "build" not in service]


@pytest.mark.parametrize("name", _outside_images())
def test_outside_images_are_pinned_to_a_version(name: str) -> None:
    """``compose up`` a year from now runs what was tested, not whatever ``latest`` became."""
    image: str = _services()[name]["image"]
    tag = image.rpartition("/")[2].partition(":")[2]
    assert tag, f"{name}: pin {image} to a version tag"
    assert tag != "latest", f"{name}: pin {image} to a version tag"


def test_named_volumes_are_declared() -> None:
    declared = set(_compose().get("volumes") or {})
    for service in _services().values():
        for volume in service.get("volumes", []):
            source = volume.partition(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, source


@pytest.mark.parametrize("name", _depot_services())
def test_compose_environment_names_real_settings(name: str) -> None:
    _assert_real_settings(list(_environment(_services()[name])))


def test_the_api_runs_in_production_on_the_migrated_database() -> None:
    api, migrate = _environment(_services()["api"]), _environment(_services()["migrate"])
    assert api["DEPOT_ENVIRONMENT"] == "production"
    assert api["DEPOT_DATABASE_URL"] == migrate["DEPOT_DATABASE_URL"]
    # `:?` makes compose refuse to start instead of running without a secret.
    assert api["DEPOT_SECRET_KEY"].startswith("${DEPOT_SECRET_KEY:?")


@pytest.mark.parametrize("name", sorted(BACKGROUND | {"migrate"}))
def test_every_depot_process_shares_the_apis_configuration(name: str) -> None:
    assert _environment(_services()[name]) == _environment(_services()["api"])


def test_the_api_stores_files_in_the_minio_bucket_compose_creates() -> None:
    api, minio = _environment(_services()["api"]), _environment(_services()["minio"])
    location = parse_s3_url(api["DEPOT_STORAGE_URL"])
    assert urlsplit(location.endpoint_url or "").netloc == "minio:9000"
    assert f"mb --ignore-existing depot/{location.bucket}" in shlex.join(
        _words(_services()["create-bucket"]["command"])
    )
    assert api["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert api["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def test_the_api_publishes_and_probes_the_port_it_serves_on() -> None:
    api = _services()["api"]
    port = _depot_command(_words(api["command"]), "depot serve")["port"]
    container_ports = {str(mapping).split(":")[-1].partition("/")[0] for mapping in api["ports"]}
    assert container_ports == {str(port)}
    assert f"http://127.0.0.1:{port}/healthz" in shlex.join(_healthcheck(api))


def test_the_image_serves_depot() -> None:
    port = _depot_command(_dockerfile_cmd(), "depot serve")["port"]
    exposed = {word.partition("/")[0] for line in _final_stage("EXPOSE") for word in line.split()}
    assert exposed == {str(port)}
    (healthcheck,) = _final_stage("HEALTHCHECK")
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck


def test_the_image_runs_as_a_non_root_user() -> None:
    users = _final_stage("USER")
    assert users, "the final stage has no USER"
    user = users[-1].partition(":")[0]
    assert user not in {"root", "0"}


def test_the_image_environment_names_real_settings() -> None:
    words = [word for line in _final_stage("ENV") for word in shlex.split(line)]
    _assert_real_settings([word.partition("=")[0] for word in words])


def test_dockerignore_keeps_what_the_image_copies() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignored = [line for line in lines if line and not line.startswith(("#", "!"))]
    copied = [
        source
        for name, arguments in _dockerfile()
        if name == "COPY" and "--from=" not in arguments
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    ]
    assert "README.md" in copied
    for source in copied:
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source


# -- deploy/nginx.conf ----------------------------------------------------------------

NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def test_nginx_configuration_is_valid(tmp_path: Path) -> None:
    """``nginx -t`` accepts the shipped proxy configuration (CI installs nginx)."""
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if nginx is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed, but CI must check deploy/nginx.conf")
        pytest.skip("nginx is not installed; apt-get install nginx to check deploy/nginx.conf")
    checked = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c", str(NGINX_CONF)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_nginx_configuration_does_what_the_readme_says() -> None:
    conf = NGINX_CONF.read_text()
    for directive in (
        "client_header_timeout",
        "client_body_timeout",
        "client_max_body_size",
        "large_client_header_buffers",
        "proxy_set_header Upgrade $http_upgrade",
        "proxy_request_buffering off",
        "proxy_buffering off",
        "X-Forwarded-For $proxy_add_x_forwarded_for",
        "DEPOT_TRUSTED_PROXIES",
    ):
        assert directive in conf, f"deploy/nginx.conf lacks {directive!r}"


# -- deploy/k8s ------------------------------------------------------------------------

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml"))
SECRET_EXAMPLE = K8S / "secret.example.yaml"
OLDEST_KUBERNETES = "1.30"
"""The oldest Kubernetes the manifests are validated for (autoscaling/v2, policy/v1 and
the restricted Pod Security profile are all older)."""

K8S_COMMANDS = {
    "api": "depot serve",
    "worker": "depot worker",
    "scheduler": "depot scheduler",
    "migrate": "depot migrate upgrade",
}
"""The subcommand each component's container runs, as in compose.yaml."""
SECRET_SETTINGS = {
    "DEPOT_SECRET_KEY",
    "DEPOT_DATABASE_URL",
    "DEPOT_REDIS_URL",
    "DEPOT_SMTP_URL",
    "DEPOT_METRICS_TOKEN",
}
"""Settings that hold credentials: in the Secret, never in the ConfigMap."""
OUTSIDE_VARIABLES = ("AWS_", "OTEL_")
"""Prefixes of the standard variables that the AWS SDK and OpenTelemetry read."""


@functools.cache
def _production() -> list[dict[str, Any]]:
    return kustomize.render(K8S / "overlays" / "production")


def _secret_example() -> dict[str, Any]:
    secret: dict[str, Any] = yaml.safe_load(SECRET_EXAMPLE.read_text())
    return secret


def _objects(kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in _production() if obj["kind"] == kind}


def _pod_templates() -> dict[str, dict[str, Any]]:
    """Each workload's pod template, by its ``app.kubernetes.io/component`` label."""
    workloads = [*_objects("Deployment").values(), *_objects("Job").values()]
    templates = [workload["spec"]["template"] for workload in workloads]
    return {
        template["metadata"]["labels"]["app.kubernetes.io/component"]: template
        for template in templates
    }


def _containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (component, container)
        for component, template in _pod_templates().items()
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]
    ]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, selector
    return selector["matchLabels"].items() <= labels.items()


def test_every_overlay_is_found() -> None:
    assert [overlay.name for overlay in OVERLAYS] == ["production"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_kubectl_renders_the_overlay_as_the_test_does(overlay: Path) -> None:
    """The renderer the other tests use agrees with the real kustomize (inside kubectl)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # A cross-check, not the validation (the tests above validate what the
        # renderer makes): kubectl comes from no registry CI can install from,
        # so a machine without it skips this, in CI too.
        pytest.skip("kubectl is not installed; its kustomize checks the renderer")
    built = subprocess.run(
        [kubectl, "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr

    def key(obj: dict[str, Any]) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    expected = sorted((obj for obj in yaml.safe_load_all(built.stdout) if obj), key=key)
    assert sorted(kustomize.render(overlay), key=key) == expected


@pytest.mark.parametrize(
    "kustomization",
    [
        {"resources": ["x.yaml"], "commonLabels": {"a": "b"}},
        {"resources": ["x.yaml"], "patches": [{"target": {"kind": "ConfigMap", "name": "y"}}]},
        {
            "resources": ["x.yaml"],
            "patches": [
                {
                    "target": {"kind": "ConfigMap", "name": "x"},
                    "patch": "[{op: replace, path: /data/missing, value: v}]",
                }
            ],
        },
    ],
)
def test_the_renderer_refuses_what_it_does_not_understand(
    tmp_path: Path, kustomization: dict[str, Any]
) -> None:
    (tmp_path / "x.yaml").write_text(
        "{apiVersion: v1, kind: ConfigMap, metadata: {name: x}, data: {}}"
    )
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    with pytest.raises(kustomize.KustomizeError):
        kustomize.render(tmp_path)


def _all_manifests() -> list[dict[str, Any]]:
    return [*_production(), _secret_example()]


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version()])
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    """Strict: an unknown or misspelt field fails too, not only a wrong type."""
    for obj in _all_manifests():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.absolute_path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} /{where}: {exc.message}")


def test_the_schema_check_catches_a_misspelt_field() -> None:
    (deployment, *_) = _objects("Deployment").values()
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


def test_every_component_runs_its_depot_command() -> None:
    assert {component for component, _ in _containers()} == set(K8S_COMMANDS)
    for component, container in _containers():
        words = [*container.get("command", []), *container.get("args", [])]
        _depot_command(words, K8S_COMMANDS[component])


def _config_names() -> set[str]:
    (config,) = _objects("ConfigMap").values()
    return set(config["data"])


def _secret_names() -> set[str]:
    return set(_secret_example()["stringData"])


def test_every_environment_name_is_a_real_setting() -> None:
    names = _config_names() | _secret_names()
    for _, container in _containers():
        names |= {variable["name"] for variable in container.get("env", [])}
    outside = {name for name in names if name.startswith(OUTSIDE_VARIABLES)}
    _assert_real_settings(sorted(names - outside))
    assert names - outside == {name for name in names if name.startswith(ENV_PREFIX)}


def test_the_config_map_and_secret_hold_every_setting_once() -> None:
    settings = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    config, secret = _config_names(), _secret_names()
    assert not settings - config - secret, (
        f"add to deploy/k8s: {sorted(settings - config - secret)}"
    )
    assert not config & secret
    assert secret & settings == SECRET_SETTINGS


def test_every_container_reads_the_config_map_and_the_secret() -> None:
    (config,) = _objects("ConfigMap")
    for component, container in _containers():
        sources = [
            source.get("configMapRef", source.get("secretRef"))["name"]
            for source in container["envFrom"]
        ]
        assert sources == [config, _secret_example()["metadata"]["name"]], component


def _k8s_settings() -> Settings:
    """The settings a pod gets from the ConfigMap and the example Secret, and nothing else."""
    (config,) = _objects("ConfigMap").values()
    variables = {**config["data"], **_secret_example()["stringData"]}
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(ENV_PREFIX):
                patch.delenv(name)
        patch.chdir(ROOT / "deploy")  # no .env of the checkout
        for name, value in variables.items():
            patch.setenv(name, value)
        return load_settings()


def test_the_migration_step_applies_what_the_job_reads() -> None:
    """docs/operations.md applies the Job first by a label selector: it must catch all it needs."""
    text = (ROOT / "docs" / "operations.md").read_text()
    (components,) = re.findall(r"-l 'app\.kubernetes\.io/component in \(([a-z,]+)\)'", text)
    selected = {
        (obj["kind"], obj["metadata"]["name"])
        for obj in _production()
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") in components.split(",")
    }
    (job,) = _objects("Job").values()
    spec = job["spec"]["template"]["spec"]
    needed = {("Job", job["metadata"]["name"]), ("ServiceAccount", spec["serviceAccountName"])}
    for container in spec["containers"]:
        needed |= {
            ("ConfigMap", ref["configMapRef"]["name"])
            for ref in container["envFrom"]
            if "configMapRef" in ref
        }
    assert needed <= selected
    assert {kind for kind, _ in selected} == {"Job", "ServiceAccount", "ConfigMap"}


def test_the_configuration_loads_as_production_settings() -> None:
    settings = _k8s_settings()
    assert settings.is_production
    assert settings.trusted_proxies, "the ingress stands in front: its forwarded headers count"
    assert settings.redis_url is not None, "the worker and scheduler Deployments need Redis"
    assert urlsplit(settings.storage_url).scheme == "s3", "every pod must see the same files"
    assert str(settings.public_base_url).startswith("https://")
    assert str(settings.var_dir).startswith("/tmp/"), "the root filesystem is read-only"


def test_the_overlay_ships_no_secret() -> None:
    """Placeholder credentials stay in the example; the real Secret comes from a secret store."""
    assert not _objects("Secret")
    assert _secret_example()["kind"] == "Secret"


def _image_uid() -> int:
    return int(_final_stage("USER")[-1].partition(":")[0])


def test_the_dockerfile_runs_as_the_uid_the_pods_require() -> None:
    assert _image_uid() == 10001


def test_pods_run_unprivileged_on_a_read_only_root() -> None:
    for component, template in _pod_templates().items():
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False, component
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, component
        assert pod["runAsUser"] == pod["runAsGroup"] == _image_uid(), component
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, component
        tmp = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, component
            assert context["allowPrivilegeEscalation"] is False, component
            assert context["capabilities"] == {"drop": ["ALL"]}, component
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert mounts.get("/tmp") in tmp, f"{component}: /tmp must be a writable emptyDir"
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert set(resources[bound]) == {"cpu", "memory"}, f"{component} {bound}"


def test_the_api_is_probed_drained_and_served_on_its_port() -> None:
    (api,) = (c for component, c in _containers() if component == "api")
    options = _depot_command(api["command"], "depot serve")
    port = options["port"]
    assert options["host"] == "0.0.0.0"  # noqa: S104 - in a pod, every interface is the pod's
    (container_port,) = api["ports"]
    assert container_port["containerPort"] == port
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": container_port["name"]}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": container_port["name"]}
    # A pod leaves the endpoints before SIGTERM; the grace period covers that wait,
    # then Depot's own drain: unready but serving, then in-flight requests finishing.
    sleep = api["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    settings = _k8s_settings()
    drain = settings.drain_delay_seconds + settings.shutdown_grace_seconds
    assert settings.drain_delay_seconds > 0, "behind the ingress, drain before stopping"
    grace = _pod_templates()["api"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= int(sleep[1]) + drain + 5
    (service,) = _objects("Service").values()
    assert _matches(
        {"matchLabels": service["spec"]["selector"]}, _pod_templates()["api"]["metadata"]["labels"]
    )
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == container_port["name"]
    (ingress,) = _objects("Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": service_port["name"]}}


def _megabytes(size: str) -> int:
    assert size.endswith("m"), size
    return int(size.removesuffix("m")) * 1024 * 1024


def test_the_ingress_streams_large_bodies_and_keeps_websockets_open() -> None:
    (ingress,) = _objects("Ingress").values()
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    upload = int(Settings.model_fields["max_upload_bytes"].default)
    assert _megabytes(annotations[prefix + "proxy-body-size"]) > upload
    assert annotations[prefix + "proxy-request-buffering"] == "off"
    assert annotations[prefix + "proxy-buffering"] == "off"
    # Depot pings an idle subscription every 20 s; an hour covers any quiet spell.
    assert int(annotations[prefix + "proxy-read-timeout"]) >= 3600
    assert int(annotations[prefix + "proxy-send-timeout"]) >= 3600
    assert ingress["spec"]["tls"], "the production overlay serves HTTPS"


def test_autoscalers_own_the_replica_counts_of_what_they_scale() -> None:
    deployments = _objects("Deployment")
    scaled = {}
    for hpa in _objects("HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        # A fixed `replicas` would reset the autoscaler's count on every apply.
        assert "replicas" not in deployments[target["name"]]["spec"], target["name"]
        scaled[target["name"]] = hpa["spec"]["metrics"]
    ((api_metric,), (worker_metric,)) = scaled["depot-api"], scaled["depot-worker"]
    assert api_metric["resource"]["name"] == "cpu"
    assert worker_metric["external"]["metric"]["name"] == "depot_jobs_queued"


def test_a_stopping_worker_hands_its_jobs_back_before_it_is_killed() -> None:
    grace = _pod_templates()["worker"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= _k8s_settings().worker_stop_grace_seconds + 10


@pytest.mark.parametrize("kind", ["PodDisruptionBudget", "NetworkPolicy"])
def test_budgets_and_policies_select_depot_pods(kind: str) -> None:
    labels = [template["metadata"]["labels"] for template in _pod_templates().values()]
    for name, obj in _objects(kind).items():
        selector = obj["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
        assert any(_matches(selector, pod) for pod in labels), f"{kind} {name} selects no pod"
    if kind == "PodDisruptionBudget":
        budgeted = {
            obj["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
            for obj in _objects(kind).values()
        }
        assert budgeted == {"api", "worker"}


def test_only_the_ingress_and_prometheus_reach_the_pods() -> None:
    """The api's port from the ingress controller and Prometheus; the worker's and the
    scheduler's metrics port from Prometheus only; nothing else, from anywhere."""
    policies = _objects("NetworkPolicy").values()
    templates = _pod_templates()
    for component, ports in (("api", {8000, 9100}), ("worker", {9100}), ("scheduler", {9100})):
        labels = templates[component]["metadata"]["labels"]
        rules = [
            rule
            for policy in policies
            if "Ingress" in policy["spec"]["policyTypes"]
            and _matches(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("ingress", [])
        ]
        assert {port["port"] for rule in rules for port in rule["ports"]} == ports, component
        assert all(source.get("namespaceSelector") for rule in rules for source in rule["from"])
        sources = {
            source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in rules
            for source in rule["from"]
            if 9100 in {port["port"] for port in rule["ports"]}
        }
        assert sources == {"monitoring"}, component


def test_the_worker_and_scheduler_serve_metrics_where_prometheus_may_reach() -> None:
    """Each one's ``--metrics-port`` is its declared ``metrics`` port, which the policy opens:
    the workers' autoscaler reads ``depot_jobs_queued`` from that scrape."""
    policy = _objects("NetworkPolicy")["depot-metrics-ingress"]
    opened = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    for component in ("worker", "scheduler"):
        template = _pod_templates()[component]
        (container,) = template["spec"]["containers"]
        options = _depot_command(container["command"], K8S_COMMANDS[component])
        (declared,) = container["ports"]
        assert declared["name"] == "metrics", component
        assert declared["containerPort"] == options["metrics_port"], component
        assert options["metrics_port"] in opened, component
        assert _matches(policy["spec"]["podSelector"], template["metadata"]["labels"])
