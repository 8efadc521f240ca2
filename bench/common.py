"""Helpers shared by the benchmarks: test nodes, a daemon in a subprocess, RSS readings."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOMAIN = """<domain type='xen'><name>%(name)s</name>
  <memory unit='KiB'>1048576</memory><currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/><pae/></features>
  <devices>
    <disk type='file' device='disk'><source file='/var/lib/xen/images/%(name)s.raw'/>
      <target dev='hda' bus='ide'/></disk>
    <disk type='file' device='cdrom'><source file='/var/lib/xen/iso/debian.iso'/>
      <target dev='hdc' bus='ide'/><readonly/></disk>
    <interface type='bridge'><mac address='00:16:3e:%(mac)s'/><source bridge='xenbr0'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <input type='tablet' bus='usb'/>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
  </devices>%(extra)s
</domain>"""


def write_node(path, count, shutoff_every=0):
    """A test node with `count` HVM guests (every n-th one shut off) at `path`; returns its URI."""
    domains = []
    for index in range(count):
        mac = '%02x:%02x:%02x' % (index >> 16 & 255, index >> 8 & 255, index & 255)
        extra = ('<test:runstate xmlns:test="http://libvirt.org/schemas/domain/test/1.0">5'
                 '</test:runstate>' if shutoff_every and index % shutoff_every == 0 else '')
        domains.append(DOMAIN % {'name': 'vm%04d' % index, 'mac': mac, 'extra': extra})
    with open(path, 'w') as node:
        node.write("<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>%s</node>"
                   % '\n'.join(domains))
    return 'test://' + os.path.abspath(path)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def start_daemon(uri, *args, log_path=os.devnull, root=ROOT, timeout=30):
    """xend-rest (of the checkout at root) in a subprocess on a free loopback port; returns
    (process, base URL)."""
    port = free_port()
    log = open(log_path, 'w')
    process = subprocess.Popen(
        [sys.executable, os.path.join(root, 'xend_rest.py'), '--uri', uri,
         '--listen', '127.0.0.1:%d' % port, *args], stdout=log, stderr=log)
    base = 'http://127.0.0.1:%d' % port
    try:
        wait_until_up(base + '/libvirt/xen/nodes/json', process, timeout)
    except BaseException:
        stop(process)  # not left running behind the benchmark
        raise
    return process, base


def wait_until_up(url, process, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError('%s exited with %s' % (process.args, process.returncode))
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError('%s did not answer within %ds' % (url, timeout))


def stop(process):
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_kib(pid, field='VmRSS'):
    with open('/proc/%d/status' % pid) as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise ValueError(field)


def cpu_seconds(pid):
    """CPU time (user + system) of a process and of its children (gunicorn's workers), so far."""
    pids = [pid]
    with open('/proc/%d/task/%d/children' % (pid, pid)) as children:
        pids += [int(child) for child in children.read().split()]
    total = 0
    for each in pids:
        with open('/proc/%d/stat' % each) as stat:
            fields = stat.read().rpartition(')')[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf('SC_CLK_TCK')
