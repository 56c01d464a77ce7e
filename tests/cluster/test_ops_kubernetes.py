"""The Kubernetes manifests (ops/kubernetes/) parse and say what a cluster needs: several
replicas, probes on /livez and /readyz at the port the scheduler's own config loader says
it listens on, the store's URL and password from a Secret (never a literal), a config the
real loader accepts, a per-replica data dir, the batches on one shared volume, a stop grace
above the scheduler's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import load_config
from core.lifecycle import GRACE_SECONDS
from tests.integration.test_ops import UNIT, _local_unit

KUBERNETES = Path(__file__).resolve().parents[2] / "ops" / "kubernetes"
DEPLOYMENT_FILE = KUBERNETES / "vmsh-scheduler.yaml"
MIGRATE_FILE = KUBERNETES / "vmsh-store-migrate.yaml"
SECRET_ENV = ("VMSH_STORE", "VMSH_STORE_PASSWORD")
STORE_URL = "postgresql://vmsh@db.example:5432/vmsh"


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)} documents"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def volume(workload: dict[str, Any], mount_path: str) -> dict[str, Any]:
    mounts = {m["mountPath"]: m for m in container(workload)["volumeMounts"]}
    assert mount_path in mounts, f"nothing mounted at {mount_path}: {sorted(mounts)}"
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    return {**volumes[mounts[mount_path]["name"]], "mount": mounts[mount_path]}


def container_port(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port in named, f"no container port named {port!r}"
    return int(named[port])


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return documents(DEPLOYMENT_FILE)


@pytest.fixture(scope="module")
def deployment(docs) -> dict[str, Any]:
    return one(docs, "Deployment")


@pytest.fixture(scope="module")
def loaded(docs, deployment, tmp_path_factory):
    """The ConfigMap's config.yaml through the real loader, with the container's
    environment (the Secret's values replaced by stand-ins)."""
    config_map = one(docs, "ConfigMap")
    folder = tmp_path_factory.mktemp("k8s")
    path = folder / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    env = {}
    for var in container(deployment)["env"]:
        env[var["name"]] = var["value"] if "value" in var else f"stand-in for {var['name']}"
    env["VMSH_STORE"] = STORE_URL
    return load_config(path, env=env, cwd=folder)


def listen_port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def test_probes_are_livez_and_readyz_on_the_port_the_config_listens_on(deployment, loaded, docs):
    listen = loaded.config.http.listen
    host = listen.rpartition(":")[0]
    assert host not in ("127.0.0.1", "localhost", "::1"), f"{listen}: the kubelet probes the pod's IP"
    port = listen_port(listen)
    c = container(deployment)
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")):
        http_get = c[probe]["httpGet"]
        assert (http_get["path"], container_port(c, http_get["port"])) == (path, port), probe
    service = one(docs, "Service")
    assert [container_port(c, p["targetPort"]) for p in service["spec"]["ports"]] == [port]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port


@pytest.mark.parametrize("path", [DEPLOYMENT_FILE, MIGRATE_FILE], ids=lambda p: p.name)
def test_the_store_url_and_password_come_from_a_secret(path):
    docs = documents(path)
    assert not [d for d in docs if d["kind"] == "Secret"], "a Secret with its value in the repository"
    workloads = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert workloads
    for workload in workloads:
        env = {v["name"]: v for v in container(workload)["env"]}
        for name in SECRET_ENV:
            assert name in env, f"{workload['metadata']['name']}: {name} not set"
            assert "value" not in env[name], f"{name} is a literal value"
            assert env[name]["valueFrom"]["secretKeyRef"]["name"], name
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            config = yaml.safe_load(doc["data"]["config.yaml"])  # its comments may say "password"
            assert "store" not in config.get("scheduler", {}), "the store comes from the Secret"
            assert "password" not in yaml.safe_dump(config).lower()


def test_the_deployment_runs_replicas_headless_and_stops_gracefully(deployment):
    spec = deployment["spec"]
    assert spec["replicas"] > 1
    c = container(deployment)
    assert c["command"] == ["vmsh-scheduler", "--no-ui", "--config", "/etc/vmsh/config.yaml"]
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > GRACE_SECONDS
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert "configMap" in str(volume(deployment, "/etc/vmsh"))


def test_the_store_is_the_secret_s_url(loaded):
    """VMSH_STORE is the variable the loader reads: the config itself names no store."""
    assert loaded.config.scheduler.store == STORE_URL


def test_data_dir_is_per_replica_and_batches_are_shared(docs, deployment, loaded):
    data = volume(deployment, str(loaded.config.scheduler.data_dir))
    assert "emptyDir" in data
    sources = [ns.source for ns in loaded.config.namespaces.values()]
    assert sources
    batches = volume(deployment, "/srv/vmsh/batches")
    assert all(Path(s).is_relative_to("/srv/vmsh/batches") for s in sources), sources
    claim = batches["persistentVolumeClaim"]["claimName"]
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica sees the same files
    assert batches["mount"]["readOnly"] is True


def test_the_migrate_job_runs_store_migrate_on_the_same_config():
    job = one(documents(MIGRATE_FILE), "Job")
    c = container(job)
    assert c["command"][:3] == ["vmsh-scheduler", "store", "migrate"]
    assert c["command"][c["command"].index("--config") + 1] == "/etc/vmsh/config.yaml"
    assert "vmsh-scheduler-config" in str(volume(job, "/etc/vmsh"))


def test_the_readme_names_every_file():
    readme = (KUBERNETES / "README.md").read_text()
    for path in KUBERNETES.glob("*.yaml"):
        assert path.name in readme, path.name
    assert "store migrate" in readme and "VMSH_STORE_PASSWORD" in readme


def test_the_systemd_unit_s_store_env_line_is_valid_when_uncommented(tmp_path):
    """ops/vmsh-scheduler.service carries the cluster-mode EnvironmentFile= commented out;
    an operator who uncomments it gets a unit systemd accepts."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not available")
    text = UNIT.read_text()
    line = "#EnvironmentFile=-/etc/vmsh-scheduler/store.env"
    assert line in text and "VMSH_STORE=" in text and "VMSH_STORE_PASSWORD_FILE=" in text
    unit = _local_unit(tmp_path)
    unit.write_text(unit.read_text().replace(line, line[1:]))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [entry for entry in result.stderr.splitlines() if unit.name in entry]
    assert result.returncode == 0 and not complaints, result.stderr
