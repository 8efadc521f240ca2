"""Fixtures of the real-hypervisor tier: a real libvirtd on qemu:///system and a tiny booting guest.

    def test_boots(libvirt_conn, guest_name, guest_xml, guest_console):
        name = guest_name("boot")
        domain = libvirt_conn.defineXML(guest_xml(name))
        domain.create()
        guest_console(name).wait_for(BOOT_MARKER)

Every domain named by `guest_name` (or passed to `guest_xml`) is destroyed and undefined after the
test; names carry this session's token so other sessions sharing the libvirtd are never touched.
"""

import itertools
import os
import secrets
import shutil
from dataclasses import dataclass

import libvirt
import pytest

from . import guest, libvirtd as daemon

NAME_PREFIX = "xrt-"
SESSION_PREFIX = f"{NAME_PREFIX}{secrets.token_hex(3)}-"


def _unavailable(reason):
    """Loud: on CI the packages are installed, so there a missing piece is a failure."""
    message = f"REAL-HYPERVISOR TIER NOT RUN: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory):
    """A `daemon.Libvirtd` answering qemu:///system: reused if one runs, else started and stopped."""
    missing = daemon.missing_binaries()
    if missing:
        _unavailable(f"{', '.join(missing)} not installed (./dev test installs the TEST_PKGS)")
    if not daemon.answers() and os.geteuid() != 0:
        _unavailable("no libvirtd answers qemu:///system and only root can start one")
    running = daemon.ensure_libvirtd(tmp_path_factory.mktemp("libvirtd"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def libvirt_conn(libvirtd):
    """One libvirt connection to qemu:///system for the session; sweeps this session's domains."""
    conn = libvirt.open(libvirtd.uri)
    yield conn
    for domain in conn.listAllDomains():
        if domain.name().startswith(SESSION_PREFIX):
            _remove_domain(conn, domain.name())
    conn.close()


@pytest.fixture(scope="session")
def guest_files():
    """The guest kernel and initramfs (`guest.GuestFiles`), built once into the user cache."""
    return guest.build_guest()


@pytest.fixture(scope="session")
def console_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("consoles")


@pytest.fixture
def guest_diagnostics(libvirtd, console_dir):
    """`guest_diagnostics(name) -> str`: console, QEMU log and libvirtd log tails for a message."""

    def diagnostics(name):
        console = console_dir / f"{name}.log"
        qemu_log = f"/var/log/libvirt/qemu/{name}.log"
        return (f"--- console {console} ---\n{daemon.tail(console)}\n"
                f"--- QEMU log {qemu_log} ---\n{daemon.tail(qemu_log, 15)}\n"
                f"--- libvirtd log ---\n{libvirtd.log_tail()}")

    return diagnostics


@pytest.fixture
def guest_name(libvirt_conn):
    """`guest_name(stem) -> str`: a domain name unique to this session, removed after the test."""
    counter = itertools.count(1)
    names = []

    def make(stem="vm"):
        names.append(f"{SESSION_PREFIX}{stem}-{next(counter)}")
        return names[-1]

    yield make
    for name in names:
        _remove_domain(libvirt_conn, name)


@pytest.fixture
def guest_xml(guest_files, guest_name, console_dir):
    """`guest_xml(name, **options) -> str`: domain XML of the booting guest (see guest.domain_xml).

    Its serial console goes to a file that `guest_console(name)` reads.
    """

    def make(name, **options):
        assert name.startswith(SESSION_PREFIX), f"use guest_name() for {name!r}: cleanup relies on it"
        return guest.domain_xml(name, guest_files, console_dir / f"{name}.log", **options)

    return make


@pytest.fixture
def guest_console(console_dir, guest_diagnostics):
    """`guest_console(name) -> guest.Console`, whose waits fail with the diagnostics attached."""
    return lambda name: guest.Console(console_dir / f"{name}.log", lambda: guest_diagnostics(name))


# A NAT network with DHCP, for the private libvirtd in a network namespace of its own: its
# addresses exist only there, so they clash with nothing of the machine's.
NAT_NETWORK = """<network>
  <name>{name}</name>
  <forward mode='nat'/>
  <bridge name='{bridge}' stp='off' delay='0'/>
  <ip address='{gateway}' prefix='{prefix}'>
    <dhcp><range start='{first}' end='{last}'/></dhcp>
  </ip>
</network>"""
NETWORK_BINARIES = ("dnsmasq", "iptables", "nsenter", "ip")


@dataclass(frozen=True)
class NatNetwork:
    """A started libvirt NAT network (its dnsmasq serving DHCP) on `daemon`."""

    daemon: "daemon.PrivateLibvirtd"
    name: str = "xrt-nat"
    bridge: str = "xrtbr0"
    gateway: str = "192.168.150.1"
    prefix: int = 24
    first: str = "192.168.150.10"
    last: str = "192.168.150.99"

    def interface_xml(self, mac):
        """A guest NIC on this network (virtio, the guest's eth0)."""
        return (f"\n    <interface type='network'><mac address='{mac}'/>"
                f"<source network='{self.name}'/><model type='virtio'/></interface>")


@pytest.fixture(scope="module")
def network_libvirtd(libvirtd, tmp_path_factory):
    """A private libvirtd (`daemon.PrivateLibvirtd`) in a network namespace of its own, with the
    network driver's binaries: whatever networks it starts (bridges, dnsmasq, NAT rules) live
    and die there, and the machine's own network is never touched. Stopped after the module,
    with everything it started."""
    if os.geteuid() != 0:
        _unavailable("only root can run a private libvirtd in a network namespace")
    missing = [name for name in NETWORK_BINARIES
               if not shutil.which(name, path=daemon._sbin_path())]
    if missing:
        _unavailable(f"{', '.join(missing)} not installed (./dev test installs the TEST_PKGS)")
    private = daemon.PrivateLibvirtd(tmp_path_factory.mktemp("network-libvirtd"), network=True)
    private.start()
    yield private
    private.close()


@pytest.fixture(scope="module")
def nat_network(network_libvirtd):
    """`NatNetwork`: a started NAT network with DHCP on `network_libvirtd`."""
    network = NatNetwork(network_libvirtd)
    conn = libvirt.open(network_libvirtd.uri)
    try:
        defined = conn.networkDefineXML(NAT_NETWORK.format(**{
            key: getattr(network, key) for key in ("name", "bridge", "gateway", "prefix", "first",
                                                    "last")}))
        defined.create()
    finally:
        conn.close()
    return network


def _remove_domain(conn, name):
    """Destroy and undefine `name`; it may be gone already, or never have been defined."""
    try:
        domain = conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        raise
    for step in (domain.destroy, lambda: domain.undefineFlags(
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)):
        try:
            step()
        except libvirt.libvirtError as err:
            # not running / not persistent / vanished meanwhile: all fine for a cleanup
            if err.get_error_code() not in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN):
                raise
