"""A lease on Xen, from the daemon dom0's systemd runs: a libvirt NAT network with DHCP defined and
started in dom0 as its administrator does (virsh net-define, net-start: libvirt's dnsmasq serves
it, its iptables rules in dom0's kernel), a PV guest whose interface is on that network takes a
lease, and `/addresses?source=lease` reports it (libxl's own lookup of libvirt networks' leases).
The guest's own console line (its DHCP script's `ip addr`) is the evidence beside the API's
answer, and libvirt's `net-dhcp-leases` a third witness. Guest and network are gone afterwards."""

import re

import pytest

from .artefacts import ADDRESS_MARKER
from .conftest import NODES

VIRSH = "virsh -c xen:///system"
NETWORK, BRIDGE = "xt-lease", "virbr-xt"
NETWORK_XML = f"""<network>
  <name>{NETWORK}</name>
  <forward mode='nat'/>
  <bridge name='{BRIDGE}' stp='off' delay='0'/>
  <ip address='192.168.150.1' prefix='24'>
    <dhcp><range start='192.168.150.100' end='192.168.150.199'/></dhcp>
  </ip>
</network>
"""
MAC = "00:16:3e:22:00:02"
NIC = f"""
    <interface type='network'><source network='{NETWORK}'/><mac address='{MAC}'/></interface>"""


@pytest.fixture(scope="module")
def network(rig):
    """The NAT network, started in dom0 with virsh; destroyed and undefined after the module."""
    rig.put(f"/root/{NETWORK}.xml", NETWORK_XML.encode())
    result = rig.dom0(f"{VIRSH} net-define /root/{NETWORK}.xml && {VIRSH} net-start {NETWORK}", timeout=120)
    assert result.rc == 0, f"{result}\n{rig.diagnostics()}"
    yield NETWORK
    result = rig.dom0(f"{VIRSH} net-destroy {NETWORK} && {VIRSH} net-undefine {NETWORK} "
                      f"&& rm /root/{NETWORK}.xml", timeout=120)
    assert result.rc == 0, result
    # as before the module: no such network, no bridge, no dnsmasq of libvirt's
    after = rig.dom0(f"{VIRSH} net-list --all --name; ip -o link show {BRIDGE}; pgrep -a dnsmasq")
    assert NETWORK not in after.out and BRIDGE not in after.out and "dnsmasq" not in after.out, after


@pytest.fixture(scope="module")
def guest(guests, network):
    name = guests.define("lease", extra=NIC, cmdline="console=hvc0 quiet xend.dhcp")
    guests.boot(name)
    yield name
    guests.remove(name)


def test_a_guest_on_a_libvirt_network_gets_its_lease_reported(rig, guests, guest):
    guests.wait_for(guest, ADDRESS_MARKER, timeout=120)
    [line] = [line for line in guests.console(guest).splitlines() if line.startswith(ADDRESS_MARKER)][-1:]
    interface, address, prefix = re.fullmatch(rf"{ADDRESS_MARKER} (\S+) ([\d.]+)/(\d+)", line.strip()).groups()
    print(f"the guest's own view: {line.strip()}")
    response = rig.api.get(f"{NODES}/{guest}/addresses", query="source=lease&wait=60")
    assert response.status == 200, response
    domid = rig.api.get(f"{NODES}/{guest}/json").json["domain"]["@id"]
    [nic] = response.json
    print(f"API (source=lease): {nic}")
    assert (interface, nic["Name"], nic["Mac"], nic["Network"], nic["Bridge"]) == (
        "eth0", f"vif{domid}.0", MAC, NETWORK, BRIDGE)
    assert nic["Addresses"] == [{"Address": address, "Prefix": int(prefix), "Family": "ipv4",
                                 "Sources": ["lease"]}]
    leases = rig.dom0(f"{VIRSH} net-dhcp-leases {NETWORK}").out
    print(f"libvirt in dom0: {leases.strip()}")
    assert re.search(rf"{MAC}\s+ipv4\s+{re.escape(address)}/{prefix}\b", leases), leases
    # every source that applies: the lease's address among them, named by the lease
    [nic] = rig.api.get(f"{NODES}/{guest}/addresses").json
    print(f"API (every source): {nic}")
    assert "lease" in {item["Address"]: item["Sources"] for item in nic["Addresses"]}[address]
