"""deploy/: every kustomization renders, every object validates, and what the manifests
say agrees with unsflow itself (its config format, its CLI, its image).

Offline: kustomize is built from its Go module, the Kubernetes schemas come with
kubernetes-validate, the CRDs from the projects' packages pinned in
scripts/crds.lock (scripts/tools.sh; built and collected once per machine).
"""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

import sys  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import validate_deploy  # noqa: E402

DEPLOY = REPO_ROOT / "deploy"
WORKLOADS = ("Deployment", "StatefulSet")


@pytest.fixture(scope="module")
def rendered() -> dict[str, tuple[list[dict], list]]:
    """{kustomization dir relative to deploy/: (objects, problems)} for every one."""
    return {str(d.relative_to(DEPLOY)): validate_deploy.validate_dir(d)
            for d in validate_deploy.kustomizations()}


def objects(rendered, where: str, kind: str | None = None) -> list[dict]:
    return [o for o in rendered[where][0] if kind is None or o["kind"] == kind]


def test_every_kustomization_renders_and_validates(rendered):
    expected = {"base", "overlays/partitioned", "overlays/replicas", "overlays/inline-config",
                "factories/factory-a", "factories/factory-b", "apps/serve", "apps/dashboard",
                "strimzi/factory", "strimzi/core", "gitops/flux/factory-a",
                "gitops/flux/factory-b", "gitops/flux/core", "gitops/argocd/factory-a",
                "gitops/argocd/factory-a/apps", "gitops/argocd/factory-b/apps"}
    assert expected <= set(rendered), expected - set(rendered)
    problems = [str(p) for _, found in rendered.values() for p in found]
    assert not problems, "\n".join(problems)
    kinds = {o["kind"] for objs, _ in rendered.values() for o in objs}
    assert {"Deployment", "StatefulSet", "ConfigMap", "Service", "PodDisruptionBudget",
            "NetworkPolicy", "ServiceAccount", "HorizontalPodAutoscaler", "ServiceMonitor",
            "Kafka", "KafkaNodePool", "KafkaUser", "KafkaTopic", "KafkaMirrorMaker2",
            "KafkaConnect", "KafkaConnector", "GitRepository", "Kustomization",
            "Application", "AppProject"} <= kinds


def test_validation_refuses_a_broken_manifest_with_its_path(tmp_path):
    """The validation can fail: a wrong type, an unknown field, a custom resource off its
    CRD's schema and a kind nobody pinned are each refused with object and path."""
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [bad.yaml]\n")
    (good,) = [o for o in validate_deploy.render(DEPLOY / "base") if o["kind"] == "Deployment"]
    base = json.loads(json.dumps(good))
    base["spec"]["replicas"] = "one"
    base["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    user = yaml.safe_load((DEPLOY / "strimzi" / "factory" / "kafkauser-unsflow.yaml").read_text())
    user["spec"]["authentication"]["type"] = "scram-sha-999"
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump_all([base, user, unknown]))
    _, problems = validate_deploy.validate_dir(tmp_path)
    text = "\n".join(str(p) for p in problems)
    assert "Deployment/unsflow: spec.replicas: 'one' is not of type" in text, text
    assert ("Deployment/unsflow: spec.template.spec.containers.0.livenessProbe: "
            "Additional properties are not allowed ('httpGett'") in text, text
    assert "KafkaUser/unsflow: spec.authentication.type: 'scram-sha-999' is not one of" in text
    assert "Gadget/g: (object): no schema for example.com/v1 Gadget" in text
    # and the same manifests, fixed, pass
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(good))
    assert validate_deploy.validate_dir(tmp_path)[1] == []


# ---------------------------------------------------------------- unsflow's contract


def pipeline_configs(rendered) -> list[tuple[str, str, dict]]:
    """(where, name, config) of every unsflow config in a ConfigMap or inline env."""
    found = []
    for where, (objs, _) in rendered.items():
        for obj in objs:
            if obj["kind"] == "ConfigMap" and "config.json" in obj.get("data", {}):
                found.append((where, obj["metadata"]["name"], obj["data"]["config.json"]))
            for container in containers(obj):
                for env in container.get("env", []):
                    if env["name"] == "EDGE_SUBSCRIPTION_CONFIG":
                        found.append((where, f"{obj['metadata']['name']} env", env["value"]))
    return found


def containers(obj: dict) -> list[dict]:
    if obj["kind"] not in WORKLOADS:
        return []
    return obj["spec"]["template"]["spec"]["containers"]


def test_every_embedded_config_passes_unsflow_validate(rendered, tmp_path):
    from unsflow.cli import main

    configs = pipeline_configs(rendered)
    assert len(configs) >= 8
    runner = CliRunner()
    for i, (where, name, text) in enumerate(configs):
        path = tmp_path / f"config-{i}.json"
        path.write_text(text)
        result = runner.invoke(main, ["validate", str(path)], catch_exceptions=False)
        assert result.exit_code == 0, f"{where} {name}: {result.output}"
        assert ": ok (" in result.output


def pipeline_pods(rendered):
    """(where, workload, its pod spec, its unsflow config) of every `unsflow run` pod."""
    for where, (objs, _) in rendered.items():
        cms = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
        for obj in objs:
            for c in containers(obj):
                if c.get("command"):  # serve, dashboard: not the pipeline's entry point
                    continue
                pod = obj["spec"]["template"]["spec"]
                env = {e["name"]: e for e in c.get("env", [])}
                if "EDGE_SUBSCRIPTION_CONFIG" in env:
                    assert not c.get("args")
                    config = json.loads(env["EDGE_SUBSCRIPTION_CONFIG"]["value"])
                else:
                    (path,) = c["args"]
                    mount = next(m for m in c["volumeMounts"]
                                 if path.startswith(m["mountPath"] + "/"))
                    assert "subPath" not in mount, "a subPath mount never sees a ConfigMap change"
                    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
                    cm = cms[volume["configMap"]["name"]]
                    config = json.loads(cm["data"][path[len(mount["mountPath"]) + 1:]])
                yield where, obj, pod, c, config


def test_pipeline_pods_keep_unsflow_s_contract(rendered):
    """Probes on the port unsflow serves, a grace period above the drain deadline,
    credentials where the file provider reads them, spool and dead letter on a
    persistent volume, a non-root user, one pod per client id."""
    seen = 0
    for where, obj, pod, c, config in pipeline_pods(rendered):
        seen += 1
        what = f"{where} {obj['kind']}/{obj['metadata']['name']}"
        port = config.get("http", {}).get("port", 9464)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", what
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", what
        for probe in ("livenessProbe", "readinessProbe"):
            assert ports[c[probe]["httpGet"]["port"]] == port, what
        assert pod["terminationGracePeriodSeconds"] >= config.get("shutdown-timeout", 25) + 10
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        refs = [config.get("mqtt-broker-credential")] + [
            t.get("credential") for t in config["targets"].values()]
        for ref in filter(None, refs):
            assert ref.get("provider") == "file", what
            mount = mounts[f"/var/run/secrets/unsflow/{ref['secret-name']}"]
            assert "secret" in volumes[mount["name"]], what
        ca = config.get("mqtt-broker", {}).get("tls", {}).get("ca-file")
        if ca:
            assert any(ca.startswith(p + "/") for p in mounts), what
        for path in (config.get("spool", {}).get("path", "./unsflow-spool"),
                     config.get("dead-letter", {}).get("path", "./unsflow-deadletter.jsonl")):
            assert not path.startswith("/"), f"{what}: {path} must land in the data volume"
        data = mounts["/var/lib/unsflow"]  # the image's working directory
        claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        assert data["name"] in claims or "persistentVolumeClaim" in volumes[data["name"]], what
        assert pod["securityContext"]["runAsNonRoot"] is True
        if obj["kind"] == "Deployment":
            assert obj["spec"]["replicas"] == 1 and obj["spec"]["strategy"]["type"] == "Recreate"
    assert seen >= 8


def env_value(rendered, where: str, container: dict, name: str) -> Any:
    for env in container.get("env", []):
        if env["name"] == name:
            return env.get("value", env.get("valueFrom"))
    cms = {o["metadata"]["name"]: o for o in objects(rendered, where, "ConfigMap")}
    for source in container.get("envFrom", []):
        data = cms[source["configMapRef"]["name"]]["data"]
        if name in data:
            return data[name]
    return None


def test_replicas_are_one_shared_group_with_stable_client_ids(rendered):
    for where in ("overlays/replicas", "factories/factory-a", "factories/factory-b"):
        (sts,) = objects(rendered, where, "StatefulSet")
        ((_, _, _, c, config),) = [p for p in pipeline_pods(rendered) if p[0] == where]
        assert env_value(rendered, where, c, "UNSFLOW_CLIENT_ID") == \
            {"fieldRef": {"fieldPath": "metadata.name"}}, where
        assert "client-id" not in config.get("mqtt-broker", {})
        assert config["mqtt-broker"].get("clean-start") is False
        assert all(f.startswith("$share/") for f in config["subscriptions"]), where
        assert config["mqtt-broker"].get("leave-shared-on-stop", True) is True
        (hpa,) = objects(rendered, where, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                 "name": sts["metadata"]["name"]}
        assert hpa["spec"]["minReplicas"] >= 2
        assert not objects(rendered, where, "Deployment")
        (pdb,) = objects(rendered, where, "PodDisruptionBudget")
        assert pdb["spec"]["maxUnavailable"] == 1


def overlap(a: str, b: str) -> bool:
    """Whether some topic matches both MQTT filters."""
    pa, pb = a.split("/"), b.split("/")
    for x, y in zip(pa, pb, strict=False):
        if "#" in (x, y):
            return True
        if x != y and "+" not in (x, y):
            return False
    if len(pa) == len(pb):
        return True
    longer = pa if len(pa) > len(pb) else pb
    return longer[min(len(pa), len(pb))] == "#"  # "a/#" matches "a" too


def test_overlap_of_filters():
    assert overlap("a/line1/#", "a/+/press") and not overlap("a/line1/#", "a/line2/#")
    assert not overlap("a/b", "a/b/c") and overlap("a/#", "a")


def test_partitioned_parts_are_disjoint_with_their_own_session_and_spool(rendered):
    where = "overlays/partitioned"
    pods = [p for p in pipeline_pods(rendered) if p[0] == where]
    assert len(pods) == 2
    ids = [env_value(rendered, where, c, "UNSFLOW_CLIENT_ID") for _, _, _, c, _ in pods]
    assert len(set(ids)) == 2 and all(ids)
    claims = [next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                   if "persistentVolumeClaim" in v) for _, _, pod, _, _ in pods]
    assert len(set(claims)) == 2
    filters = [list(config["subscriptions"]) for *_, config in pods]
    for fa in filters[0]:
        for fb in filters[1]:
            assert not overlap(fa, fb), (fa, fb)


def test_factories_differ_only_in_broker_bucket_and_line(rendered):
    def normal(where: str, factory: str) -> list:
        out = []
        for obj in objects(rendered, where):
            text = json.dumps(obj, sort_keys=True)
            text = re.sub(r"unsflow-env-[a-z0-9]{10}", "unsflow-env", text)
            text = text.replace(factory, "FACTORY")
            obj = json.loads(text)
            if obj["kind"] == "ConfigMap" and "config.json" in obj["data"]:
                config = json.loads(obj["data"]["config.json"])
                config["targets"]["lake"]["s3-bucket"] = "BUCKET"
                config["subscriptions"] = {re.sub(r"/line\d+/", "/LINE/", f): v
                                           for f, v in config["subscriptions"].items()}
                obj["data"]["config.json"] = config
            out.append(obj)
        return sorted(out, key=lambda o: (o["kind"], o["metadata"]["name"]))

    a = normal("factories/factory-a", "factory-a")
    b = normal("factories/factory-b", "factory-b")
    assert a == b


def test_gitops_points_at_kustomizations_that_validate(rendered):
    paths: set[str] = set()
    repos: set[str] = set()
    for where, (objs, _) in rendered.items():
        if not where.startswith("gitops/"):
            continue
        for obj in objs:
            if obj["kind"] == "Kustomization":  # Flux's
                paths.add(obj["spec"]["path"].removeprefix("./"))
            elif obj["kind"] == "Application":
                paths.add(obj["spec"]["source"]["path"])
                repos.add(obj["spec"]["source"]["repoURL"])
            elif obj["kind"] == "GitRepository":
                repos.add(obj["spec"]["url"])
    assert len(repos) == 1, repos
    assert len(paths) >= 8
    for path in paths:
        assert path.startswith("deploy/"), path
        assert path.removeprefix("deploy/") in rendered, f"{path}: no kustomization that validates"


def test_commands_parse_with_the_real_cli(rendered):
    """`unsflow serve` and `unsflow dashboard` flags exist; the dashboard, off loopback,
    has its token (issue 12: 127.0.0.1 by default, a token anywhere else)."""
    import click

    from unsflow.cli import main

    checked = set()
    for where, (objs, _) in rendered.items():
        for obj in objs:
            for c in containers(obj):
                command = c.get("command") or []
                if not command or command[0] != "unsflow":
                    continue
                words = command[1:] + c.get("args", [])
                global_words = []
                while words[0].startswith("--"):
                    takes_value = "=" not in words[0]
                    global_words += words[:1 + takes_value]
                    words = words[1 + takes_value:]
                name, rest = words[0], words[1:]
                checked.add(name)
                sub = main.commands.get(name)
                ctx = main.make_context("unsflow", [*global_words, name if sub else "schema"])
                if name == "dashboard":
                    args = dict(a.split("=", 1) for a in rest if a.startswith("--") and "=" in a)
                    if args.get("--host", "127.0.0.1") not in ("127.0.0.1", "localhost"):
                        assert env_value(rendered, where, c, "UNSFLOW_DASHBOARD_TOKEN"), where
                    if sub is None:  # not in this checkout yet (issue 12 brings it)
                        continue
                assert isinstance(sub, click.Command), f"{where}: unsflow {name}?"
                sub.make_context(name, list(rest), parent=ctx)
    assert {"serve", "dashboard"} <= checked


def test_images_are_this_version_of_unsflow(rendered):
    version = re.search(r'^version = "(.+)"$', (REPO_ROOT / "pyproject.toml").read_text(),
                        re.M).group(1)
    images = {c["image"] for objs, _ in rendered.values() for o in objs for c in containers(o)}
    assert images == {f"registry.example.com/unsflow/unsflow:{version}"}, images


def test_kustomize_is_the_pinned_build():
    assert "v5.8.2" in validate_deploy.tool("kustomize")
    assert shutil.which(validate_deploy.tool("kustomize"))
