"""What a killed real-node run leaves behind is recognised by its names and removed by the next start."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest

from tests.kube import node as n

pytestmark = [pytest.mark.node]


def _exists(*cmd: str) -> bool:
    return subprocess.run(list(cmd), capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="creating links, namespaces and nftables tables needs root")
def test_cleanup_removes_links_namespace_rules_mounts_and_state(tmp_path: Path) -> None:
    fd = os.open(n.LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pytest.skip("a real node is running on this machine (it holds the lock)")
        state = tmp_path / "scoring-node"
        (state / "kubelet" / "pods" / "x" / "volumes").mkdir(parents=True)
        mnt = state / "kubelet" / "pods" / "x" / "volumes" / "tmpfs"
        mnt.mkdir()
        # Leftovers as a SIGKILLed run leaves them: bridge, veth, client netns, guard table, a tmpfs mount.
        n.sh("ip", "link", "add", n.BRIDGE, "type", "bridge")
        n.sh("ip", "link", "add", n.HOST_VETH, "type", "veth", "peer", "name", n.CLIENT_VETH)
        n.sh("ip", "netns", "add", n.CLIENT_NETNS)
        n.sh("nft", "add", "table", "inet", n.NFT_TABLE)
        n.sh("mount", "-t", "tmpfs", "tmpfs", str(mnt))
        sleeper = subprocess.Popen(["ip", "netns", "exec", n.CLIENT_NETNS, "sleep", "300"])
        try:
            done = n.cleanup(state)
        finally:
            sleeper.kill()
            sleeper.wait()
        assert not _exists("ip", "link", "show", n.BRIDGE)
        assert not _exists("ip", "link", "show", n.HOST_VETH)
        assert not Path(f"/run/netns/{n.CLIENT_NETNS}").exists()
        assert not _exists("nft", "list", "table", "inet", n.NFT_TABLE)
        assert not n._mounts_under(state)
        assert not state.exists()
        assert any("unmounted" in d for d in done) and any(n.BRIDGE in d for d in done), done
    finally:
        os.close(fd)
