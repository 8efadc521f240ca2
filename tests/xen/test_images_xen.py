"""Images on a dir pool in dom0, driven from the management host; bytes checked on both ends."""

import hashlib
import os

import pytest

POOL = "xt-pool"
POOL_DIR = "/var/lib/xend-rest-pool"  # outside any ReadWritePaths=: libvirtd writes the files, not us
IMAGES = f"/libvirt/xen/images/{POOL}"


@pytest.fixture(scope="module")
def pool(rig):
    """A dir pool, defined by the dom0 administrator as they would (virsh)."""
    virsh = "virsh -c xen:///system"
    result = rig.dom0(f"{virsh} pool-info {POOL} >/dev/null 2>&1 || {{ {virsh} pool-define-as {POOL} dir "
                      f"--target {POOL_DIR} && {virsh} pool-start {POOL}; }}")
    assert result.rc == 0, result
    return POOL


def dom0_sha256(rig, name):
    return rig.dom0(f"sha256sum {POOL_DIR}/{name}").out.split()[0]


def test_pool_is_listed(rig, pool):
    pools = {p["Name"]: p for p in rig.api.get("/libvirt/xen/pools/json").json}
    assert pools[pool]["Type"] == "dir" and pools[pool]["Path"] == POOL_DIR


def test_create_resize_clone_wipe_delete(rig, pool):
    response = rig.api.post(f"{IMAGES}/create", query="name=xt-a.img&capacity=8M")
    assert response.status == 201, response
    assert response.json["Capacity"] == 8 << 20
    assert rig.dom0(f"echo hello | dd of={POOL_DIR}/xt-a.img conv=notrunc 2>/dev/null").rc == 0
    response = rig.api.post(f"{IMAGES}/xt-a.img/resize", query="capacity=16M")
    assert response.status in (200, 204), response
    assert rig.dom0(f"stat -c %s {POOL_DIR}/xt-a.img").out.strip() == str(16 << 20)
    response = rig.api.post(f"{IMAGES}/xt-a.img/clone", query="name=xt-b.img")
    assert response.status == 201, response
    assert dom0_sha256(rig, "xt-b.img") == dom0_sha256(rig, "xt-a.img")
    assert rig.api.post(f"{IMAGES}/xt-b.img/wipe").status in (200, 204)
    assert rig.dom0(f"head -c 5 {POOL_DIR}/xt-b.img | od -An -c").out.split() == ["\\0"] * 5
    for name in ("xt-a.img", "xt-b.img"):
        assert rig.api.post(f"{IMAGES}/{name}/delete").status == 204
        assert rig.dom0(f"test -e {POOL_DIR}/{name}").rc == 1
    assert rig.api.get(f"{IMAGES}/xt-a.img/json").status == 404


def test_upload_then_download_sha256_equal_on_both_ends(rig, pool):
    data = os.urandom(3 << 20) + b"xend-rest"
    sent = hashlib.sha256(data).hexdigest()
    response = rig.api.request("PUT", f"{IMAGES}/xt-up.img/upload", body=data,
                               headers={"Content-Type": "application/octet-stream"})
    assert response.status == 201, response
    assert dom0_sha256(rig, "xt-up.img") == sent
    response = rig.api.get(f"{IMAGES}/xt-up.img/download")
    assert response.status == 200
    assert hashlib.sha256(response.body).hexdigest() == sent
    assert rig.api.post(f"{IMAGES}/xt-up.img/delete").status == 204
