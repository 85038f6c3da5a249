"""A cluster whose etcd has authentication on: `cluster.username` and `cluster.password`.

A real etcd (one member) with a root user, a `dcim` user allowed read and write on the test's prefix only,
and `etcdctl auth enable`. With the right password a node joins and leads and `dcim cluster status` reads the
site; with a wrong one, or none, etcd refuses and the node does not join.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.etcd import EtcdCluster
from tests.e2e.harness import REPO, DaemonProcess
from tests.grafana.hall import hall_config
from tests.helpers import require_binary

PREFIX = "/dcim-auth"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    require_binary("etcd", "etcd-server")
    require_binary("etcdctl", "etcd-client")
    with EtcdCluster(tmp_path_factory.mktemp("etcd-auth"), size=1) as cluster:
        endpoint = cluster.endpoints[0]

        def ctl(*args: str, user: str | None = None) -> None:
            argv = ["etcdctl", f"--endpoints={endpoint}", *([f"--user={user}"] if user else []), *args]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                                    env={**os.environ, "ETCDCTL_API": "3"})
            assert result.returncode == 0, (argv, result.stdout, result.stderr)

        ctl("user", "add", "root:root-secret", "--interactive=false")
        ctl("role", "add", "dcim")
        ctl("role", "grant-permission", "dcim", "--prefix=true", "readwrite", f"{PREFIX}/")
        ctl("user", "add", "dcim:dcim-secret", "--interactive=false")
        ctl("user", "grant-role", "dcim", "dcim")
        ctl("auth", "enable")
        yield cluster


def node_file(tmp_path: Path, etcd: EtcdCluster, password: str | None) -> Path:
    raw: dict[str, Any] = hall_config()
    raw["state_dir"] = str(tmp_path / "state")
    raw["http"] = {"enabled": False}
    raw["logging"] = {"level": "info", "format": "json"}
    raw["cluster"] = {"endpoints": etcd.endpoints, "node_id": "node-a", "prefix": PREFIX, "lease_ttl": "3s"}
    if password is not None:
        secret = tmp_path / "etcd-password"
        secret.write_text(password)
        raw["cluster"].update({"username": "dcim", "password": f"file:{secret}"})
    path = tmp_path / "dcim.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def status(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dcim.app.cli", "cluster", "status", "-c", str(path), "--json"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=REPO)


async def test_a_node_joins_and_leads_with_the_right_password(etcd: EtcdCluster, tmp_path: Path) -> None:
    path = node_file(tmp_path, etcd, "dcim-secret")
    with DaemonProcess(path) as daemon:
        await daemon.ready("cluster: joined", timeout=60)
        await daemon.ready("cluster: leading the site", timeout=60)
        result = status(path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert set(report["nodes"]) == {"node-a"} and report["leader"]["node"] == "node-a", report
        assert daemon.stop() == 0, daemon.log()


@pytest.mark.parametrize("password", ["wrong", None])
def test_etcd_refuses_a_wrong_or_missing_password(etcd: EtcdCluster, tmp_path: Path, password: str | None) -> None:
    result = status(node_file(tmp_path, etcd, password))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "cannot read the cluster's state" in result.stderr


def test_username_and_password_go_together(tmp_path: Path) -> None:
    raw: dict[str, Any] = hall_config()
    raw["state_dir"] = str(tmp_path / "state")
    raw["cluster"] = {"endpoints": ["127.0.0.1:2379"], "username": "dcim"}
    path = tmp_path / "dcim.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "dcim.app.cli", "check", "-c", str(path)], capture_output=True,
                            text=True, timeout=60, check=False, cwd=REPO)
    assert result.returncode != 0
    assert "cluster.username and cluster.password go together" in result.stdout + result.stderr
