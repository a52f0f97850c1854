"""The container and deployment files agree with the code: no container engine or cluster
here, so they are parsed and every config key, ``CHATD_*`` variable, CLI flag, port, probe
path, label selector and metric they name is checked against the real schema, CLI and
metrics registry."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from chatd.cli import build_parser
from chatd.config import ENV_ALIASES, SECTIONS, Config, load_config, parse_bind
from chatd.observability.metrics import Metrics
from chatd.storage import open_store
from stomp.trio import BrokerRuntime

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
#: Served without authentication; tests/chatd/test_health_lifecycle.py and test_metrics.py
#: prove they answer.
PROBE_PATHS = {"/health/live", "/health/ready", "/metrics"}
CONFIG_IN_IMAGE = "/etc/chatd/chatd.toml"
PLACEHOLDERS = {  # plausible values for variables a manifest fills from a Secret
    "CHATD_DATABASE_URL": "postgresql://chatd:secret@postgres:5432/chatd",
    "CHATD_RABBITMQ_URL": "amqp://chatd:secret@rabbitmq:5672/%2F",
    "CHATD_REDIS_URL": "redis://:secret@redis:6379/0",
}


def check_env_name(name: str) -> None:
    """`name` is a variable chatd reads: a named alias, CHATD_CONFIG, or SECTION__KEY."""
    if not name.startswith("CHATD_") or name in ENV_ALIASES or name == "CHATD_CONFIG":
        return
    section, sep, key = name[len("CHATD_") :].lower().partition("__")
    assert sep, f"{name} is not a variable chatd reads"
    assert section in SECTIONS, f"{name}: no config section [{section}]"
    assert key in SECTIONS[section].__dataclass_fields__, f"{name}: no key {section}.{key}"


def check_cli(args: list[str]) -> Any:
    """Parse `args` exactly as `chatd` would; an unknown subcommand or flag fails."""
    try:
        return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`chatd {shlex.join(args)}` is not a valid command line")


def load_with_env(toml_text: str, env: dict[str, str], tmp_path: Path) -> Config:
    path = tmp_path / "chatd.toml"
    path.write_text(toml_text)
    for name in env:
        check_env_name(name)
    return load_config(path, {k: PLACEHOLDERS.get(k, v) for k, v in env.items()})


# -- Dockerfile --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined; a FROM naming a
    build argument (`${BASE}`) is replaced by the argument's default."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    text = re.sub(r"^FROM \$\{(\w+)\}", lambda m: f"FROM {defaults[m.group(1)]}", text, flags=re.M)
    lines = [line.strip() for line in text.splitlines()]
    out = [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]
    stages = [i for i, (op, _) in enumerate(out) if op.upper() == "FROM"]
    return [(op.upper(), rest) for op, rest in out[stages[-1] :]]  # type: ignore[misc]


def test_dockerfile_runs_chatd_serve_as_non_root_with_a_healthcheck(tmp_path: Path) -> None:
    final = dockerfile()
    ops = dict(final)
    assert re.fullmatch(r"python:3\.\d+-slim", ops["FROM"]), ops["FROM"]
    user = ops["USER"].split(":")[0]
    assert user not in ("root", "0")
    command = json.loads(ops["ENTRYPOINT"]) + json.loads(ops["CMD"])
    assert command == ["chatd", "serve", "--config", CONFIG_IN_IMAGE]
    assert check_cli(command[1:]).config == CONFIG_IN_IMAGE

    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for op, rest in final if op == "ENV")))
    config = load_with_env(
        (DEPLOY / "chatd.toml").read_text(),
        {k: v for k, v in env.items() if k.startswith("CHATD_")},
        tmp_path,
    )
    port = parse_bind(config.server.bind)[1]
    assert ops["EXPOSE"] == str(port)
    health = ops["HEALTHCHECK"]
    assert "http://127.0.0.1:{port}/health/live" in health
    assert f"os.environ.get('CHATD_BIND', ':{port}')" in health  # the port follows the bind
    assert (f"COPY deploy/chatd.toml {CONFIG_IN_IMAGE}") in [
        f"COPY {r}" for o, r in final if o == "COPY"
    ]
    assert config.logging.format == "json"


# -- compose -----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_compose_has_the_services_and_two_instances_behind_a_balancer(tmp_path: Path) -> None:
    services = compose()["services"]
    assert {"postgres", "rabbitmq", "redis", "lb"} <= set(services)
    instances = {
        name: s
        for name, s in services.items()
        if s.get("image") == "chatd:local" and s["command"][0] == "serve"
    }
    assert len(instances) >= 2
    nginx = (DEPLOY / "nginx.conf").read_text()
    for name, service in instances.items():
        args = check_cli(service["command"])
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        source = DEPLOY / mounts[args.config]
        config = load_with_env(source.read_text(), service["environment"], tmp_path)
        assert config.database.backend == "postgres"
        assert config.rabbitmq is not None, "several instances need [rabbitmq]"
        # The Redis tier is on, and never waited for: it is not a point of failure.
        assert config.redis is not None
        assert urlsplit(config.redis.url).hostname == "redis"
        assert service["depends_on"]["redis"]["condition"] == "service_started"
        host, port = parse_bind(config.server.bind)
        assert host == "0.0.0.0"
        assert f"server {name}:{port}" in nginx, f"nginx does not balance to {name}"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    migrate = services["migrate"]
    assert check_cli(migrate["command"]).command == "migrate"
    for name in migrate["environment"]:
        check_env_name(name)


def test_the_tracing_override_switches_every_instance_to_its_collector(tmp_path: Path) -> None:
    base = compose()["services"]
    override = yaml.safe_load((DEPLOY / "compose.tracing.yaml").read_text())["services"]
    instances = [name for name, s in base.items() if s.get("command", [""])[0] == "serve"]
    assert sorted(n for n in override if n != "jaeger") == sorted(instances)
    for name in instances:
        env = {**base[name]["environment"], **override[name]["environment"]}
        source = DEPLOY / "chatd.toml"
        tracing = load_with_env(source.read_text(), env, tmp_path).tracing
        assert tracing.enabled
        assert tracing.endpoint == "http://jaeger:4318/v1/traces"
    # base compose alone: no tracing
    plain = load_with_env(
        (DEPLOY / "chatd.toml").read_text(), base[instances[0]]["environment"], tmp_path
    )
    assert not plain.tracing.enabled


def test_nginx_passes_websocket_upgrades_on_ws() -> None:
    nginx = (DEPLOY / "nginx.conf").read_text()
    ws = nginx[nginx.index("location /ws") :]
    ws = ws[: ws.index("}")]
    assert "proxy_set_header Upgrade $http_upgrade" in ws
    assert "proxy_http_version 1.1" in ws
    assert "$request_uri" not in nginx
    assert "$args" not in nginx


# -- Kubernetes --------------------------------------------------------------------------------


def k8s(app: str = "chatd") -> dict[str, dict[str, Any]]:
    """Every document under deploy/k8s of `app` (its ``app.kubernetes.io/name`` label) by
    kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") == "Kustomization":
                continue
            if doc["metadata"]["labels"]["app.kubernetes.io/name"] == app:
                assert doc["kind"] not in found, f"two {doc['kind']} documents"
                found[doc["kind"]] = doc
    return found


def test_k8s_has_every_object_and_kustomize_lists_the_files() -> None:
    objects = k8s()
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Job",
    } <= set(objects)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (K8S / name).exists(), name


def _container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec["containers"]
    return container


def test_deployment_probes_config_and_graceful_termination(tmp_path: Path) -> None:
    objects = k8s()
    deployment, configmap, secret = objects["Deployment"], objects["ConfigMap"], objects["Secret"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(pod)
    args = check_cli(container["args"])
    assert args.command == "serve"

    env = {}
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], ref["key"]
        env[item["name"]] = item.get("value", "from-secret")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == args.config)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    config = load_with_env(configmap["data"][mount["subPath"]], env, tmp_path)

    # The public key file the env names is mounted from the Secret.
    key_dir, _, key_file = env["CHATD_JWT_PUBLIC_KEY"].rpartition("/")
    keys = next(m for m in container["volumeMounts"] if m["mountPath"] == key_dir)
    key_volume = next(v for v in pod["volumes"] if v["name"] == keys["name"])
    assert key_file in {i["path"] for i in key_volume["secret"]["items"]}
    assert key_file in secret["stringData"]

    port = parse_bind(config.server.bind)[1]
    (declared,) = container["ports"]
    assert declared["containerPort"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in PROBE_PATHS
        assert get["port"] in (port, declared["name"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    # Endpoints drop the pod within the drain delay, and everything ends before SIGKILL.
    assert config.server.drain_delay > container["readinessProbe"]["periodSeconds"]
    assert pod["terminationGracePeriodSeconds"] > (
        config.server.drain_delay + config.server.shutdown_grace
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in PROBE_PATHS
    assert int(annotations["prometheus.io/port"]) == port


def test_the_optional_redis_tier_is_wired_to_its_server() -> None:
    chatd, redis = k8s(), k8s("redis")
    secret = chatd["Secret"]
    container = _container(chatd["Deployment"]["spec"]["template"]["spec"])
    (ref,) = [
        item["valueFrom"]["secretKeyRef"]
        for item in container["env"]
        if item["name"] == "CHATD_REDIS_URL"
    ]
    assert ref["optional"] is True  # a Secret without redis-url runs without the tier
    url = urlsplit(secret["stringData"][ref["key"]])
    assert url.scheme == "redis"
    service = redis["Service"]
    assert url.hostname == service["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"]
    deployment = redis["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    server = _container(deployment["spec"]["template"]["spec"])
    assert port["targetPort"] in {p["name"] for p in server["ports"]}
    # The server requires the password the URL carries, from the same Secret.
    assert "--requirepass" in server["args"]
    (password,) = [
        item["valueFrom"]["secretKeyRef"]
        for item in server["env"]
        if item["name"] == "REDIS_PASSWORD"
    ]
    assert (password["name"], password["key"]) == (secret["metadata"]["name"], "redis-password")
    assert url.password == secret["stringData"]["redis-password"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_selectors_and_targets_match_the_deployment() -> None:
    objects = k8s()
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    assert (
        objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )
    port_names = {p["name"] for p in _container(deployment["spec"]["template"]["spec"])["ports"]}
    assert {p["targetPort"] for p in objects["Service"]["spec"]["ports"]} <= port_names
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] >= 2  # one pod draining must leave one serving
    job = objects["Job"]["spec"]["template"]["spec"]
    assert check_cli(_container(job)["args"]).command == "migrate"


# -- Prometheus alerts -------------------------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every sample name chatd can export, with every optional component attached."""
    metrics = Metrics()
    metrics.attach_store(open_store("sqlite:///unused.sqlite3"))
    metrics.attach_runtime(BrokerRuntime())
    metrics.attach_publisher(SimpleNamespace(published=0, retried=0, dead=0))
    metrics.attach_profiles(SimpleNamespace(hits=0, misses=0), SimpleNamespace(state="closed"))
    metrics.attach_bridge(
        SimpleNamespace(connected=True, published=0, consumed=0, duplicates=0, bindings=0)
    )
    metrics.attach_redis(SimpleNamespace(up=True, calls=0, errors=0))
    metrics.attach_shared_limits(SimpleNamespace(leased=0, checked=0, fallbacks=0))
    metrics.redis_latency.observe(0.001)
    metrics.attach_sockjs(lambda: 0)
    metrics.attach_readiness(SimpleNamespace(started=True, draining=False, last_ready=True))
    for path in ("rest", "stomp"):
        metrics.message_sent(path, 0.01)
        metrics.send_refused(path)
    metrics.outbox_published([0.1])
    metrics.http_requests.labels("GET", "200").inc()
    text = metrics.render().decode()
    names = set(re.findall(r"^(chatd_\w+)", text, re.M))
    # STOMP label-only families have no sample until a frame passes: take their HELP lines.
    names |= {f"{n}_total" for n in re.findall(r"^# HELP (chatd_\w+)", text, re.M)}
    names |= set(re.findall(r"^# HELP (chatd_\w+)", text, re.M))
    return names


def test_every_alert_is_complete_and_names_real_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    exported = exported_metric_names()
    seen = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("page", "ticket", "info"), rule["alert"]
            assert rule["annotations"]["summary"]
            assert rule["annotations"]["description"]
            assert re.fullmatch(r"\d+[smh]", rule["for"])
            for name in re.findall(r"\b(chatd_\w+)", rule["expr"]):
                assert name in exported, f"{rule['alert']}: chatd does not export {name}"
                seen.add(name)
    assert len(seen) >= 8


def test_metric_names_follow_prometheus_conventions() -> None:
    for name in exported_metric_names():
        assert re.fullmatch(r"chatd_[a-z0-9_]+", name), name


def test_example_config_in_the_image_is_valid_toml_with_known_keys(tmp_path: Path) -> None:
    text = (DEPLOY / "chatd.toml").read_text()
    tomllib.loads(text)
    load_with_env(text, {}, tmp_path)
