"""Fixtures: each test gets its own libvirt test node and a client that calls the WSGI app directly."""
import contextlib
import http.client
import io
import json
import socket
import time
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest

from xend_rest.api.app import make_app
from xend_rest.server.serving import Server

DOM0_UUID = '00000000-0000-0000-0000-000000000000'
WEB_UUID = '11111111-2222-3333-4444-555555555555'

# A small Xen host: dom0, two running guests, one shut off, one paused, one transient.
NODE_XML = """<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <cpu><mhz>2400</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets>
       <cores>4</cores><threads>2</threads></cpu>
  <memory>16777216</memory>
  %s
  <network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'/></network>
</node>"""

DOMAIN_XML = """<domain type='xen'>
  <name>%(name)s</name>%(uuid)s
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static' current='1'>4</vcpu>
  <os><type arch='x86_64'>%(os)s</type></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/xen/images/%(name)s.raw'/>
      <target dev='xvda' bus='xen'/>
    </disk>
    <interface type='bridge'><mac address='00:16:3e:00:00:%(mac)s'/><source bridge='xenbr0'/></interface>
  </devices>
  %(extra)s
</domain>"""

DOMAINS = [
    # name, uuid, os type, extra test-driver state
    ('Domain-0', DOM0_UUID, 'xen', ''),
    ('web', WEB_UUID, 'hvm', ''),
    ('db', None, 'xen', ''),
    ('idle', None, 'xen', '<test:runstate>5</test:runstate>'),
    ('frozen', None, 'xen', '<test:runstate>3</test:runstate>'),
    ('scratch', None, 'xen', '<test:transient/>'),
]


def node_xml(domains=DOMAINS):
    parts = []
    for index, (name, uuid, os_type, extra) in enumerate(domains):
        parts.append(DOMAIN_XML % {
            'name': name, 'uuid': '<uuid>%s</uuid>' % uuid if uuid else '',
            'os': os_type, 'mac': '%02x' % index, 'extra': extra})
    return NODE_XML % '\n'.join(parts)


@pytest.fixture
def node_uri(tmp_path):
    """A libvirt URI for a fresh test node of this test's own."""
    path = tmp_path / 'node.xml'
    path.write_text(node_xml())
    return 'test://%s' % path


@contextlib.contextmanager
def serving(app, listeners=('127.0.0.1:0',), **options):
    """A Server for app on free local ports, shut down at the end."""
    server = Server(app, listeners, **options)
    server.start()
    try:
        yield server
    finally:
        server.shutdown(grace=2)


def until(condition, bound=10):
    """Poll a condition of this process's own state every 10 ms, for at most `bound` seconds."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError('condition not reached within %g s' % bound)
        time.sleep(0.01)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket."""

    def __init__(self, path, timeout=10):
        super().__init__('localhost', timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Response:
    def __init__(self, status, headers, body):
        self.status = int(status.split()[0])
        self.headers = dict(headers)
        self.body = body
        is_json = self.headers.get('Content-Type', '').startswith('application/json')
        self.json = json.loads(body) if body and is_json else None


class Client:
    """Calls the WSGI app in-process, through wsgiref's validator (no socket)."""

    def __init__(self, app):
        self.app = app
        self.checked = validator(app)

    @property
    def conn(self):
        """The app's own libvirt connection: what the hypervisor looks like afterwards."""
        return self.app.hypervisor.connection.get()

    def request(self, method, path, body=None, query='', headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        environ = {}
        setup_testing_defaults(environ)
        environ.update({
            'REQUEST_METHOD': method, 'PATH_INFO': path, 'QUERY_STRING': query,
            'wsgi.input': io.BytesIO(body or b''), 'CONTENT_LENGTH': str(len(body or b'')),
            'CONTENT_TYPE': 'application/json',
        })
        environ.update(headers or {})
        captured = {}

        def start_response(status, response_headers, exc_info=None):
            captured['status'], captured['headers'] = status, response_headers

        result = self.checked(environ, start_response)
        try:
            payload = b''.join(result)
        finally:
            result.close()
        return Response(captured['status'], captured['headers'], payload)

    def get(self, path, query=''):
        return self.request('GET', path, query=query)

    def post(self, path, body=None, query=''):
        return self.request('POST', path, body=body, query=query)


@pytest.fixture
def api(node_uri):
    app = make_app(uri=node_uri)
    yield Client(app)
    app.close()
