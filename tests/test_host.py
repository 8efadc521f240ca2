"""_ping, /version, /info, statistics and /metrics: what an operator reads about the host."""
import re

import libvirt
import pytest

from xend_rest.api.app import make_app
from xend_rest.hypervisor.stats import STATE_NAMES, describe

from conftest import Client, DOM0_UUID, WEB_UUID

NODES = '/libvirt/xen/nodes'
XEN = '{connection="xen"}'  # the label of every per-connection series of the default one
STATS_KEYS = {'Name', 'Uuid', 'Id', 'State', 'Autostart', 'CpuTimeNs', 'Vcpus', 'Memory', 'Block', 'Network'}


def test_ping_answers_ok_without_opening_libvirt(tmp_path):
    app = make_app(uri='test://%s' % (tmp_path / 'absent.xml'))
    client = Client(app)
    for method in ('GET', 'HEAD'):
        response = client.request(method, '/_ping')
        assert response.status == 200
        assert response.headers['Content-Type'] == 'text/plain; charset=utf-8'
        assert response.headers['Content-Length'] == '2'
        assert response.headers['Libvirt-Connected'] == 'false'
        assert response.body == (b'OK' if method == 'GET' else b'')
    assert app.hypervisor.connection.connects == 0
    assert client.get('/info').status == 503  # the readiness check does need libvirt


def test_ping_says_when_libvirt_is_connected(api):
    api.get(NODES + '/json')
    assert api.get('/_ping').headers['Libvirt-Connected'] == 'true'


def test_version(api):
    version = api.get('/version').json
    assert version['Hypervisor'] == 'TEST'
    assert re.fullmatch(r'\d+\.\d+\.\d+', version['LibvirtVersion'])
    number = libvirt.getVersion()
    assert version['LibvirtVersion'] == '%d.%d.%d' % (number // 10**6, number // 1000 % 1000,
                                                      number % 1000)
    assert version['ApiVersion'] == '1.0'


def test_info_describes_the_host_and_counts_domains_without_dom0(api):
    info = api.get('/info').json
    assert (info['Cpus'], info['CpuMhz'], info['MemoryKiB']) == (8, 2400, 16777216)
    assert info['Domains'] == {'running': 3, 'paused': 1, 'shutoff': 1, 'other': 0}
    assert info['Driver'] == 'TEST'


def test_info_says_what_the_driver_cannot_do_before_a_501_does(api):
    supports = api.get('/info').json['Supports']
    assert supports['DeviceAttach'] is False
    disk = {'disk': {'@type': 'file', '@device': 'disk', 'source': {'@file': '/x.raw'},
                     'target': {'@dev': 'xvdb', '@bus': 'xen'}}}
    assert api.post(NODES + '/web/devices/attach', disk).status == 501
    assert supports['BulkStats'] is True


def test_info_probes_change_nothing(api):
    before = api.conn.lookupByName('web').XMLDesc(0)
    api.get('/info')
    assert api.conn.lookupByName('web').XMLDesc(0) == before


def test_stats_of_one_domain(api):
    stats = api.get(NODES + '/web/stats').json
    assert set(stats) == STATS_KEYS
    assert (stats['Name'], stats['Uuid'], stats['State']) == ('web', WEB_UUID, 'running')
    assert stats['Memory'] == {'CurrentKiB': 1048576, 'MaximumKiB': 2097152}
    assert stats['Vcpus'] == 1
    assert stats['CpuTimeNs'] > 0
    assert [disk['Device'] for disk in stats['Block']] == ['xvda']
    assert all(isinstance(value, int) for value in stats['Block'][0].values()
               if not isinstance(value, str))
    assert [nic['Device'] for nic in stats['Network']] == ['testnet0']


def test_stats_of_a_stopped_domain_have_no_devices(api):
    stats = api.get(NODES + '/idle/stats').json
    assert (stats['State'], stats['Id'], stats['Block'], stats['Network']) == \
        ('shutoff', None, [], [])


@pytest.mark.parametrize('ident, status', [('nosuch', 404), ('Domain-0', 403), (DOM0_UUID, 403)])
def test_stats_of_no_domain_or_dom0(api, ident, status):
    assert api.get(NODES + '/%s/stats' % ident).status == status


def test_stats_of_every_domain_without_dom0(api):
    running = {stats['Name'] for stats in api.get(NODES + '/stats').json}
    every = {stats['Name'] for stats in api.get(NODES + '/stats', 'all=1').json}
    assert running == {'web', 'db', 'frozen', 'scratch'}
    assert every == running | {'idle'}
    assert api.get(NODES + '/stats', 'all=maybe').status == 400


def test_bulk_and_per_statistic_paths_give_the_same_shape(api):
    dom = api.conn.lookupByName('web')
    bulk = {'state.state': 1, 'cpu.time': 5000, 'vcpu.current': 2, 'balloon.current': 512,
            'balloon.maximum': 1024, 'block.count': 1, 'block.0.name': 'xvda',
            'block.0.rd.reqs': 1, 'block.0.rd.bytes': 2, 'block.0.wr.reqs': 3,
            'block.0.wr.bytes': 4, 'net.count': 1, 'net.0.name': 'vif2.0', 'net.0.rx.bytes': 5,
            'net.0.rx.pkts': 6, 'net.0.rx.errs': 0, 'net.0.rx.drop': 0, 'net.0.tx.bytes': 7,
            'net.0.tx.pkts': 8, 'net.0.tx.errs': 0, 'net.0.tx.drop': 0}
    from_bulk, from_calls = describe(dom, bulk), describe(dom, {})
    assert _shape(from_bulk) == _shape(from_calls)
    assert from_bulk['Block'][0] == {'Device': 'xvda', 'ReadRequests': 1, 'ReadBytes': 2,
                                     'WriteRequests': 3, 'WriteBytes': 4, 'Errors': None}
    assert (from_bulk['CpuTimeNs'], from_bulk['Memory']['CurrentKiB']) == (5000, 512)


def _shape(value):
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return 'value'


# -- metrics --------------------------------------------------------------------------------------

def _samples(text):
    """{(name, labels): value} of a text exposition, checking every family has HELP and TYPE."""
    samples, described = {}, set()
    for line in text.splitlines():
        if line.startswith('# HELP ') or line.startswith('# TYPE '):
            _hash, kind, name = line.split()[:3]
            described.add((name, kind))
            continue
        found = re.fullmatch(r'(\w+)(\{.*\})? (\S+)', line)
        assert found, line
        name, labels, value = found.groups()
        family = re.sub(r'_(bucket|sum|count)$', '', name)
        assert (family, 'HELP') in described and (family, 'TYPE') in described, name
        samples[name, labels or ''] = float(value)
    return samples


def test_metrics_cover_domains_with_labels(api):
    response = api.get('/metrics')
    assert response.headers['Content-Type'] == 'text/plain; version=0.0.4; charset=utf-8'
    samples = _samples(response.body.decode())
    web = '{connection="xen",domain="web",uuid="%s"}' % WEB_UUID
    assert samples['xend_domain_state', web] == libvirt.VIR_DOMAIN_RUNNING
    assert samples['xend_domain_memory_current_bytes', web] == 1048576 * 1024
    assert samples['xend_domain_block_read_bytes_total',
                   '{connection="xen",domain="web",uuid="%s",device="xvda"}' % WEB_UUID] > 0
    assert not [key for key in samples if DOM0_UUID in key[1]]
    assert samples['xend_libvirt_up', XEN] == 1
    assert samples['xend_libvirt_connects_total', XEN] == 1


def test_metrics_have_one_series_per_statistic_of_every_domain_and_device(api):
    """/metrics says what /nodes/stats?all=1 says: a series per known number, no other."""
    from xend_rest.api.handlers.system import BLOCK_METRICS, NET_METRICS
    stats = api.get(NODES + '/stats', 'all=1').json
    samples = _samples(api.get('/metrics').body.decode())
    expected = {}
    for dom in stats:
        label = 'connection="xen",domain="%s",uuid="%s"' % (dom['Name'], dom['Uuid'])
        expected.update({
            ('xend_domain_state', '{%s}' % label): STATE_NAMES.index(dom['State']),
            ('xend_domain_cpu_seconds_total', '{%s}' % label): None,  # it runs on
            ('xend_domain_vcpus', '{%s}' % label): dom['Vcpus'],
            ('xend_domain_memory_current_bytes', '{%s}' % label):
                dom['Memory']['CurrentKiB'] * 1024,
            ('xend_domain_memory_maximum_bytes', '{%s}' % label):
                dom['Memory']['MaximumKiB'] * 1024})
        for group, table in (('Block', BLOCK_METRICS), ('Network', NET_METRICS)):
            for device in dom[group]:
                for name, key, _help in table:
                    if device[key] is not None:
                        expected[name, '{%s,device="%s"}' % (label, device['Device'])] = None
    domains = {key: value for key, value in samples.items() if key[0].startswith('xend_domain_')}
    assert set(domains) == set(expected)
    assert all(domains[key] == value for key, value in expected.items() if value is not None)


def test_metrics_count_requests_by_route_pattern_not_path(api):
    for name in ('web', 'db', 'nosuch'):
        api.get(NODES + '/%s/json' % name)
    api.get('/no/such/endpoint')
    samples = _samples(api.get('/metrics').body.decode())
    route = 'route="GET /libvirt/xen/nodes/{ident}/json"'
    assert samples['xend_http_requests_total', '{%s,status="200"}' % route] == 2
    assert samples['xend_http_requests_total', '{%s,status="404"}' % route] == 1
    assert samples['xend_http_requests_total', '{route="unmatched",status="404"}'] == 1
    assert samples['xend_http_request_duration_seconds_count', '{%s,status="200"}' % route] == 2
    assert samples['xend_http_request_duration_seconds_bucket',
                   '{%s,status="200",le="+Inf"}' % route] == 2
    assert not [key for key in samples if '/web/' in key[1]]


def test_metrics_escape_label_values(api):
    xml = api.conn.lookupByName('idle').XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    xml = re.sub(r'<uuid>.*</uuid>', '', xml).replace('<name>idle</name>',
                                                      '<name>we"ird\\name</name>')
    api.conn.defineXML(xml)
    text = api.get('/metrics').body.decode()
    assert 'domain="we\\"ird\\\\name"' in text
    _samples(text)


def test_metrics_still_answer_when_libvirt_is_away(tmp_path):
    client = Client(make_app(uri='test://%s' % (tmp_path / 'absent.xml')))
    response = client.get('/metrics')
    assert response.status == 200
    samples = _samples(response.body.decode())
    assert samples['xend_libvirt_up', XEN] == 0
    assert not [key for key in samples if key[0].startswith('xend_domain_')]


def test_metrics_say_libvirt_is_down_when_its_connection_broke(api):
    api.conn.close()  # behind the pool's back: every call on it now fails as on a broken link
    response = api.get('/metrics')
    assert response.status == 200
    assert _samples(response.body.decode())['xend_libvirt_up', XEN] == 0
    samples = _samples(api.get('/metrics').body.decode())  # the broken one was let go
    assert samples['xend_libvirt_up', XEN] == 1
    assert samples['xend_libvirt_connects_total', XEN] == 2


class WithoutBulkStats:
    """A test node's connection whose driver lacks the bulk statistics calls, as libxl does
    (VIR_ERR_NO_SUPPORT, which libvirtd logs as an error each time): counts how often it is asked."""

    def __init__(self, conn):
        self._conn, self.asked = conn, 0

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def _unsupported(self, *_args):
        self.asked += 1
        err = libvirt.libvirtError('this function is not supported by the connection driver')
        err.err = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_FROM_NONE, str(err), 2, '', None,
                   None, 0, 0)
        raise err

    getAllDomainStats = domainListGetStats = _unsupported


def test_a_driver_without_bulk_stats_is_asked_once_per_connection(node_uri):
    from consoles_support import FixedConnection
    conn = WithoutBulkStats(libvirt.open(node_uri))
    app = make_app(connection=FixedConnection(conn))
    try:
        api = Client(app)
        for path in (NODES + '/stats', NODES + '/web/stats', '/metrics', NODES + '/stats'):
            response = api.get(path)
            assert response.status == 200, path
        assert conn.asked == 1
        assert api.get(NODES + '/web/stats').json['CpuTimeNs'] > 0  # from the per-domain calls
    finally:
        app.close()
