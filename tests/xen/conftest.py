"""Fixtures of the Xen tier: one Xen + dom0 booted in QEMU for the whole session.

    def test_boots(rig, guest):
        name = guest.define("boot")          # a PV guest defined through POST /nodes/create
        assert rig.api.post(f"{NODES}/{name}/start").status == 204
        guest.wait_for(name, READY_MARKER)   # the guest's own console, via xenconsoled's log
"""

import functools
import itertools
import os
import re
import secrets
import shlex
import shutil
import threading
import time
import warnings
from pathlib import Path

import pytest

from realhv.conftest import _unavailable

from . import artefacts as built
from .artefacts import READY_MARKER
from .rig import Rig, link_pair

HERE = Path(__file__).parent
NODES = "/libvirt/xen/nodes"
# libvirt's <os><type> for each kind of guest this tier boots with a <kernel> (domaincommon.rng)
OS_TYPES = {"pv": "<type arch='x86_64' machine='xenpv'>linux</type>",
            "pvh": "<type arch='x86_64' machine='xenpvh'>xenpvh</type>"}
REQUIRED = ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mke2fs", "openssl", "dpkg-deb",
            "dpkg-scanpackages", "apt-get")


@pytest.fixture(scope="session")
def links():
    """The two ends of the link between host A (`rig`) and host B (`rig_b`)."""
    return link_pair()


@pytest.fixture(scope="session")
def rig(tmp_path_factory, links):
    """Xen 4.17 + a Debian dom0 (systemd, Debian's Xen and libvirt units) with xend-rest installed
    by apt from its .deb, booted once; its end of the link to host B (`rig_b`) is there from the
    start."""
    missing = [b for b in REQUIRED if not shutil.which(b, path=os.environ["PATH"] + ":/usr/sbin:/sbin")]
    if missing:
        _unavailable(f"XEN TIER: {', '.join(missing)} not installed (./dev test installs the TEST_PKGS)")
    if os.geteuid() != 0:
        _unavailable("XEN TIER: building dom0's root (mmdebstrap --mode=root) needs root")
    started = time.monotonic()
    files = built.build(log=lambda message: print(message, flush=True))
    running = Rig(files, tmp_path_factory.mktemp("xen"), link=links[0])
    print(f"xen tier: artefacts ready in {time.monotonic() - started:.0f} s ({files.directory})")
    try:
        running.start()
    except BaseException:
        running.stop()
        raise
    print(f"xen tier: dom0 booted, provisioned, the package installed: {running.timings}")
    yield running
    print(f"xen tier: phases (s): {running.timings}")
    running.stop()


@pytest.fixture(scope="module")
def rig_b(rig, links, tmp_path_factory):
    """A second Xen host, for migrations: the same image, booted for the module that asks for it,
    host name dom0-b, its own SMBIOS UUID, certificates from host A's CA, libvirtd's TLS socket,
    no xend-rest (the management host's daemon drives both)."""
    started = time.monotonic()
    host = Rig(rig.artefacts, tmp_path_factory.mktemp("xen-b"), name="dom0-b", link=links[1], ca=rig.pki,
               install=False)
    try:
        host.start()
    except BaseException:
        host.stop()
        raise
    print(f"xen tier: host B up in {time.monotonic() - started:.0f} s: {host.timings}")
    yield host
    print(f"xen tier: host B's phases (s): {host.timings}")
    host.stop()


class Guests:
    """PV guests of this session: defined through the API, their consoles read in dom0."""

    def __init__(self, rig):
        self.rig = rig
        self.prefix = f"xt-{secrets.token_hex(2)}-"
        self.counter = itertools.count(1)
        self.names = []

    def name(self, stem="vm"):
        self.names.append(f"{self.prefix}{stem}-{next(self.counter)}")
        return self.names[-1]

    def xml(self, name, memory_mib=256, current_memory_mib=None, vcpus=2, current_vcpus=1, extra="", kind="pv",
            cmdline="console=hvc0 quiet"):
        """A PV guest (kind="pv") or a PVH one ("pvh": the same kernel, entered by Xen directly
        in a HAP container; no device model, no firmware). `xend.dhcp` on its command line: its
        eth0 asks for a DHCP lease."""
        os_type = OS_TYPES[kind]
        return f"""<domain type='xen'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <currentMemory unit='MiB'>{current_memory_mib or memory_mib}</currentMemory>
  <vcpu current='{current_vcpus}'>{vcpus}</vcpu>
  <os>
    {os_type}
    <kernel>{built.GUEST_KERNEL}</kernel>
    <initrd>{built.GUEST_INITRD}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <console type='pty'><target type='xen' port='0'/></console>{extra}
  </devices>
</domain>"""

    def define(self, stem="vm", **options):
        """Define a guest through POST /nodes/create; its name."""
        from xend_rest.hypervisor import convert
        name = self.name(stem)
        response = self.rig.api.post(f"{NODES}/create", convert.xml_to_dict(self.xml(name, **options)))
        assert response.status == 201, response
        return name

    def boot(self, name, query=""):
        """Start the guest through the API and wait for its init's next READY line."""
        ready = self.count(name, READY_MARKER)
        response = self.rig.api.post(f"{NODES}/{name}/start", query=query)
        assert response.status == 204, response
        self.wait_for(name, READY_MARKER, count=ready + 1)

    def console(self, name):
        return self.rig.guest_console(name)

    def count(self, name, marker):
        return _count(self.console(name), marker)

    def wait_for(self, name, marker, count=1, timeout=120):
        """Wait until `marker` starts `count` lines of the guest's console (polled inside dom0:
        one request, not one per poll, since dom0 is slow under emulation)."""
        log = shlex.quote(f"/var/log/xen/console/guest-{name}.log")
        result = self.rig.dom0(f"timeout {timeout} sh -c 'until [ $(grep -c ^{marker} {log} 2>/dev/null) -ge {count} ]; "
                               f"do sleep 0.5; done'", timeout=timeout + 5)
        assert result.rc == 0, (f"{count} x {marker!r} not on {name}'s console within {timeout} s\n"
                                f"--- guest console ---\n{self.console(name)[-3000:]}\n{self.rig.diagnostics()}")

    def last_state(self, name):
        """The guest's last STATE line as a dict: cpus, mem_kib, disks, nics."""
        return _last_state(self.console(name))

    def wait_state(self, name, timeout=60, **wanted):
        """Wait until the guest reports each `key=value` of `wanted` (values compared as text
        or through a predicate); fails at once if the guest boots again meanwhile."""
        boots = self.count(name, built.BOOT_MARKER)
        deadline = time.monotonic() + timeout
        while True:
            console = self.console(name)  # once per poll: dom0 is slow under emulation
            state = _last_state(console)
            if all(key in state and (want(state[key]) if callable(want) else state[key] == str(want))
                   for key, want in wanted.items()):
                return
            booted = _count(console, built.BOOT_MARKER) > boots
            why = "booted again" if booted else f"did not report {wanted} within {timeout} s"
            assert not booted and time.monotonic() < deadline, (
                f"{name} {why}\n--- guest console ---\n{console[-3000:]}\n{self.rig.diagnostics()}")
            time.sleep(1)

    def ready(self, name, boots=1, timeout=180):
        """Wait until the guest booted `boots` times or more and its last boot reached its init's
        READY line; how many times it booted."""
        deadline = time.monotonic() + timeout
        while True:
            console = self.console(name)
            booted, ready = _count(console, built.BOOT_MARKER), _count(console, READY_MARKER)
            if booted >= boots and ready >= booted:
                return booted
            assert time.monotonic() < deadline, (f"{name}: boot {booted} not ready within {timeout} s\n"
                                                 f"--- guest console ---\n{console[-3000:]}")
            time.sleep(1)

    def domid(self, name):
        return int(self.rig.dom0(f"virsh -c xen:///system domid {name}").out.strip())

    def remove(self, name):
        self.rig.dom0(f"virsh -c xen:///system destroy {name}; virsh -c xen:///system undefine {name}")


def _count(console, marker):
    """How many lines of a guest's console `marker` starts."""
    return sum(line.startswith(marker) for line in console.splitlines())


def _last_state(console):
    """The last STATE line of a guest's console as a dict (the first after a boot follows the
    shell's prompt on the same line)."""
    lines = [line.split(built.STATE_MARKER, 1)[1] for line in console.splitlines() if built.STATE_MARKER in line]
    return dict(re.findall(r"(\w+)=(\S*)", lines[-1])) if lines else {}


def redone_after_a_rig_triple_fault(test):
    """Run a test of a running guest (its fixtures `rig` and `guest`) once more when it
    failed after Xen logged a triple fault of that guest's domain, or of one created since (its
    restart by libxl, then reset again): the rig's flaw, not Xen's or ours
    (docs/xen.md, "Guests": QEMU's emulated nested paging now and then resets a PVH or HVM
    guest, and libxl boots it again from its persistent definition). The second run waits for
    that boot, then asserts everything again; a failure without a triple fault, or a second
    failure, fails the test."""
    @functools.wraps(test)
    def run(**fixtures):
        rig, name = fixtures["rig"], fixtures["guest"]
        guests = Guests(rig)
        boots = guests.ready(name)  # reset between two tests: its new boot ends first
        domid = guests.domid(name)
        try:
            return test(**fixtures)
        except AssertionError:
            if not rig.triple_faults(since=domid):
                raise
        warnings.warn(f"{name} (domain {domid} or later) triple-faulted in the rig during the test: "
                      "it ran again after the guest's new boot (docs/xen.md)")
        guests.ready(name, boots + 1)
        return test(**fixtures)
    return run


@pytest.fixture(scope="module")
def guests(rig):
    """Guests of one test module, removed at its end (a boot costs 20-60 s: share them)."""
    made = Guests(rig)
    yield made
    for name in made.names:
        made.remove(name)


# The order of the modules: the HVM guest (hvm_boot below) boots beside the modules that boot no
# guest of their own, its tests follow and remove it; then the rest, whose guests a running HVM
# guest was seen to slow about threefold (PVH boots of 55-72 s against 17-25 s); the migrations
# (with host B, booted for them: nothing else shares the two cores with its boot) and dom0's
# reboot end the session.
FIRST_MODULES = ("test_create_xen.py", "test_images_xen.py", "test_package_xen.py", "test_hvm_xen.py")
HVM_MODULE = "test_hvm_xen.py"
LAST_MODULES = ("test_migration_xen.py", "test_reboot_xen.py")


def pytest_collection_modifyitems(items):
    """Reorder this tier's tests among themselves, in the places they hold in the session."""
    def place(item):
        name = item.path.name
        if name in FIRST_MODULES:
            return FIRST_MODULES.index(name) - len(FIRST_MODULES)
        return LAST_MODULES.index(name) + 1 if name in LAST_MODULES else 0
    here = [index for index, item in enumerate(items) if item.path.parent == HERE]
    ordered = sorted((items[index] for index in here), key=place)  # stable within each group
    for index, item in zip(here, ordered):
        items[index] = item


def hvm_xml(name, memory_mib=256, cmdline="console=tty0 console=ttyS0 quiet"):
    """An HVM guest: hvmloader and SeaBIOS, the device model (Debian's qemu-system-xen) in dom0,
    the PV guest's kernel and initramfs booted directly by the device model, its serial port
    written to the file the tests read (on whichever host it runs), its screen on VNC (loopback
    in dom0)."""
    return f"""<domain type='xen'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='xenfv'>hvm</type>
    <loader type='rom'>/usr/lib/xen-4.17/boot/hvmloader</loader>
    <kernel>{built.GUEST_KERNEL}</kernel>
    <initrd>{built.GUEST_INITRD}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/><apic/><pae/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/libexec/xen-qemu-system-i386</emulator>
    <serial type='file'><source path='/var/log/xen/console/guest-{name}.log'/><target port='0'/></serial>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
    <video><model type='cirrus'/></video>
  </devices>
</domain>"""


class HVMBoot(threading.Thread):
    """Defines and starts the HVM guest through the API (before any test stops libvirtd or the
    daemon), then waits in the background for its init, recording what each step answered and
    when."""

    def __init__(self, rig, guests):
        super().__init__(daemon=True)
        self.rig, self.guests = rig, guests
        self.name = guests.name("hvm")
        self.steps = {}  # step: (seconds since the start, what it answered)
        self.started = time.monotonic()

    def start(self):
        from xend_rest.hypervisor import convert
        created = self.rig.api.post(f"{NODES}/create", convert.xml_to_dict(hvm_xml(self.name)))
        self.steps["create"] = (time.monotonic() - self.started, created)
        response = self.rig.api.post(f"{NODES}/{self.name}/start", timeout=600)
        self.steps["start"] = (time.monotonic() - self.started, response)
        if response.status == 204:
            super().start()

    def run(self):
        log = shlex.quote(f"/var/log/xen/console/guest-{self.name}.log")
        try:
            waited = self.rig.dom0(f"timeout 900 sh -c 'until grep -q ^{READY_MARKER} {log} 2>/dev/null; "
                                   "do sleep 2; done'", timeout=905)
        except Exception as err:  # reported by the test that joins
            waited = repr(err)
        self.steps["ready"] = (time.monotonic() - self.started, waited)


@pytest.fixture(scope="session", autouse=True)
def hvm_boot(request):
    """The HVM guest's boot, started before the session's first Xen test when test_hvm_xen.py
    is to run (it joins the boot, and removes the guest)."""
    if not any(item.path.name == HVM_MODULE for item in request.session.items):
        yield None
        return
    rig = request.getfixturevalue("rig")
    boot = HVMBoot(rig, Guests(rig))
    boot.start()
    yield boot
    if boot.is_alive():
        boot.join(timeout=60)
    for name in boot.guests.names:
        boot.guests.remove(name)
