"""The Helm chart (`deploy/helm/s2-feature`), without a cluster: rendered and linted by the Helm
SDK (helm-python-sdk), the manifests validated against the Kubernetes schemas
(kubernetes-validate, offline), and the properties that matter asserted on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from s2feature.service.settings import EnvSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "s2-feature"
KUBE_VERSION = "1.32"
# Variables the chart sets that EnvSettings does not read (none today).
READ_ELSEWHERE: set[str] = set()
SECRET_SETTINGS = {"redis_password", "db_arango_password", "api_token"}
ALL_ON = {
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "persistence": {"enabled": True},
    "bundle": {"rev": "r1"},
    "extraEnv": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
}


def env_name(name: str) -> str:
    """The variable a settings field is read from: its alias (a standard variable such as
    OTEL_EXPORTER_OTLP_ENDPOINT), else S2_<NAME>."""
    alias = EnvSettings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else f"S2_{name.upper()}"


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(CHART)
    rendered = chart.render(values, name="s2", namespace="s2")
    docs: list[dict[str, Any]] = []
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [main] = of_kind(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return dict(main)


def env_names(docs: list[dict[str, Any]]) -> set[str]:
    configmap = of_kind(docs, "ConfigMap")["data"]
    return set(configmap) | {item["name"] for item in container(docs)["env"]}


def quantity(text: str) -> float:
    units = {"m": 1e-3, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_the_chart_lints_clean() -> None:
    report = helm_python.lint(CHART, strict=True)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "everything-on"])
def test_the_manifests_are_valid_kubernetes_objects(values: dict[str, Any] | None) -> None:
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "ConfigMap", "Service", "ServiceAccount"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: no schema offline; checked below
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_an_invalid_manifest_is_refused_by_the_validator() -> None:
    deployment = of_kind(render(), "StatefulSet")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_probes_hit_the_health_endpoints_on_the_api_port() -> None:
    docs = render()
    main = container(docs)
    [port] = main["ports"]
    configmap = of_kind(docs, "ConfigMap")["data"]
    assert port["containerPort"] == int(configmap["S2_API_PORT"])
    assert configmap["S2_API_HOST"] == "0.0.0.0"
    assert main["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": port["name"]}
    assert main["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": port["name"]}
    assert main["startupProbe"]["httpGet"]["path"] == "/health/live"


def test_resources_within_the_budget() -> None:
    resources = container(render())["resources"]
    for bound in ("requests", "limits"):
        assert 0.5 <= quantity(resources[bound]["cpu"]) <= 1.0
        assert 512 * 2**20 <= quantity(resources[bound]["memory"]) <= 2 * 2**30


def test_non_root_read_only_root_and_writable_volumes_for_the_data() -> None:
    docs = render()
    pod = of_kind(docs, "StatefulSet")["spec"]["template"]["spec"]
    main = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in main["volumeMounts"]}
    configmap = of_kind(docs, "ConfigMap")["data"]
    for variable in ("S2_DB_SQLITE_PATH", "S2_LAKE_DIR", "S2_CONFIG_CACHE"):
        assert any(configmap[variable].startswith(mount + "/") for mount in mounts), variable
    assert "/tmp" in mounts
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]
    # With persistence, a claim of its own for each instance, mounted at /data ...
    persisted = of_kind(render({"persistence": {"enabled": True}}), "StatefulSet")["spec"]
    (template,) = persisted["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "data"
    assert template["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert not [v for v in persisted["template"]["spec"]["volumes"] if v["name"] == "data"]
    # ... or the existing claim named in the values, for every instance.
    existing = {"persistence": {"enabled": True, "existingClaim": "s2-data"}}
    spec = of_kind(render(existing), "StatefulSet")["spec"]
    assert "volumeClaimTemplates" not in spec
    claims = [
        v["persistentVolumeClaim"]
        for v in spec["template"]["spec"]["volumes"]
        if v["name"] == "data"
    ]
    assert claims == [{"claimName": "s2-data"}]


def test_each_instance_has_a_stable_name_which_is_its_consumer_name() -> None:
    # A replacement pod is the same consumer: it takes its streams and pending entries over at
    # once and resumes its recompute tasks (docs/deploy.md, "Consumer name").
    docs = render({"replicaCount": 3})
    statefulset = of_kind(docs, "StatefulSet")["spec"]
    assert statefulset["replicas"] == 3
    assert statefulset["podManagementPolicy"] == "Parallel"
    (consumer,) = [e for e in container(docs)["env"] if e["name"] == "S2_CONSUMER_NAME"]
    assert consumer["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    (governing,) = [
        d
        for d in docs
        if d["kind"] == "Service" and d["metadata"]["name"] == statefulset["serviceName"]
    ]
    assert governing["spec"]["clusterIP"] == "None"
    assert not [d for d in docs if d["kind"] in ("Deployment", "PersistentVolumeClaim")]


def test_secrets_come_from_a_secret_reference_and_never_inline() -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] == "Secret"]
    configmap = of_kind(docs, "ConfigMap")["data"]
    secret_vars = {"S2_REDIS_PASSWORD", "S2_DB_ARANGO_PASSWORD", "S2_API_TOKEN"}
    assert not secret_vars & set(configmap)
    env = {item["name"]: item for item in container(docs)["env"]}
    for name in secret_vars:
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "s2-feature-secrets"
    # The values offer no place for a secret value: the schema refuses one in settings.
    chart = helm_python.Chart.load(CHART)
    with pytest.raises(helm_python.HelmValuesError, match="redis_password"):
        chart.validate_schema(
            {**chart.values, "settings": {**chart.values["settings"], "redis_password": "p"}}
        )


def test_every_variable_the_chart_sets_is_read_by_the_settings_model() -> None:
    read = {env_name(name) for name in EnvSettings.model_fields}
    everything: dict[str, Any] = {
        "settings": {
            name: "x"
            for name in helm_python.Chart.load(CHART).values["settings"]
            if name not in {"api_port", "db_backend"}  # typed in the schema
        }
    }
    for values in (None, everything):
        names = {n for n in env_names(render(values)) if n.startswith("S2_")}
        assert names - READ_ELSEWHERE <= read, sorted(names - READ_ELSEWHERE - read)


def test_every_setting_is_reachable_from_the_values() -> None:
    values = helm_python.Chart.load(CHART).values
    from_settings = set(values["settings"])
    from_secrets = {name.removeprefix("S2_").lower() for name in values["secrets"]["keys"]}
    reachable = (
        {f"S2_{key.upper()}" for key in from_settings}
        | set(values["secrets"]["keys"])
        | set(values["extraEnv"])
    )
    missing = {env_name(name) for name in EnvSettings.model_fields} - reachable
    assert not missing, f"settings no value can set: {sorted(missing)}"
    assert from_secrets >= SECRET_SETTINGS
    assert not SECRET_SETTINGS & from_settings  # never a plain value
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["settings"]["properties"]) == from_settings


def test_a_set_value_reaches_the_environment_and_null_leaves_it_unset() -> None:
    docs = render({"settings": {"dqc_jump_lookback": 60, "regime_reference_symbol": "ETHUSDT"}})
    configmap = of_kind(docs, "ConfigMap")["data"]
    assert configmap["S2_DQC_JUMP_LOOKBACK"] == "60"
    assert configmap["S2_REGIME_REFERENCE_SYMBOL"] == "ETHUSDT"
    assert "S2_DQC_MAD_FLOOR_RATIO" not in configmap
    # The rendered environment is one the service accepts.
    env = {**configmap, "S2_REDIS_PASSWORD": "p"}
    from s2feature.service.settings import load_settings

    settings = load_settings(env)
    assert settings.bundle.dqc.jump_lookback == 60


def test_the_schema_refuses_unknown_settings() -> None:
    chart = helm_python.Chart.load(CHART)
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema({**chart.values, "settings": {"symbol": "typo", "api_port": 8080}})
    # An S2_* variable cannot bypass `settings` through extraEnv.
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema({**chart.values, "extraEnv": {"S2_SYMBOLS": "x"}})


def test_extra_variables_reach_the_container() -> None:
    docs = render({"extraEnv": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}})
    configmap = of_kind(docs, "ConfigMap")["data"]
    assert configmap["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert "OTEL_SERVICE_NAME" not in configmap


def test_the_prometheus_rule_is_the_alerts_file() -> None:
    docs = render(ALL_ON)
    rule = of_kind(docs, "PrometheusRule")
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "s2-alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    monitor = of_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"


def test_a_bundle_in_the_values_is_mounted_as_the_config_file(tmp_path: Path) -> None:
    bundle = {"rev": "r7", "dqc": {"jump_lookback": 100}, "bounds": {"spread_bps_max": 250.5}}
    docs = render({"bundle": bundle})
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    settings_map, bundle_map = maps["s2-s2-feature"]["data"], maps["s2-s2-feature-bundle"]["data"]
    assert settings_map["S2_CONFIG_FILE"] == "/etc/s2/bundle.json"
    main = container(docs)
    [mount] = [m for m in main["volumeMounts"] if m["name"] == "bundle"]
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/s2", True)
    # The file the pod reads is a bundle the service accepts, equal to the values.
    path = tmp_path / "bundle.json"
    path.write_text(bundle_map["bundle.json"])
    from s2feature.service.settings import load_settings

    settings = load_settings({**settings_map, "S2_CONFIG_FILE": str(path)})
    assert settings.bundle.rev == "r7"
    assert settings.bundle.dqc.jump_lookback == 100
    assert settings.bundle.bounds.spread_bps_max == 250.5
    # Without one, nothing is mounted and S2_CONFIG_FILE is not set.
    plain = render()
    assert "S2_CONFIG_FILE" not in of_kind(plain, "ConfigMap")["data"]


def test_runbook_links_can_be_made_absolute() -> None:
    docs = render(
        {"prometheusRule": {"enabled": True, "runbookBaseUrl": "https://ops.example/s2/"}}
    )
    rules = [r for g in of_kind(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert all(
        r["annotations"]["runbook_url"].startswith("https://ops.example/s2/runbook.md#")
        for r in rules
    )


def test_the_service_monitor_selects_one_service_so_each_pod_is_scraped_once() -> None:
    docs = render(ALL_ON)
    selector = of_kind(docs, "ServiceMonitor")["spec"]["selector"]

    def selected(service: dict[str, Any]) -> bool:
        labels = service["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in selector["matchLabels"].items()):
            return False
        for expression in selector.get("matchExpressions", []):
            assert expression["operator"] == "NotIn"
            if labels.get(expression["key"]) in expression["values"]:
                return False
        return True

    services = [d for d in docs if d["kind"] == "Service"]
    assert len(services) == 2  # the client Service and the StatefulSet's headless one
    assert [s["spec"].get("clusterIP") for s in services if selected(s)] == [None]
