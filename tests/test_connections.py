"""Several hypervisors, one daemon: /libvirt/{connection}/... per configured connection, each with
its own libvirt connection, events, metrics and outage; credentials limited to some of them."""
import json
import threading
import time

import pytest

from conftest import DOM0_UUID, Client, node_xml
from test_host import _samples
from xend_rest import defaults
from xend_rest.api import openapi, security
from xend_rest.api.app import make_app
from xend_rest.api.security import ConfigError, Guard
from xend_rest.hypervisor.hypervisors import public_uri
from xend_rest.hypervisor.libvirt_errors import unavailable
from xend_rest.hypervisor.names import check as check_name

# Node a is the suite's usual host (web, db, idle, frozen, scratch); node b has other guests.
B_DOMAINS = [('Domain-0', DOM0_UUID, 'xen', ''), ('mail', None, 'xen', ''),
             ('build', None, 'xen', '<test:runstate>5</test:runstate>')]
TOKENS = {'a-operator': 'a' * 32, 'b-reader': 'b' * 32, 'everything': 'e' * 32}


@pytest.fixture
def uris(tmp_path):
    paths = {'a': tmp_path / 'a.xml', 'b': tmp_path / 'b.xml'}
    paths['a'].write_text(node_xml())
    paths['b'].write_text(node_xml(B_DOMAINS))
    return {name: 'test://%s' % path for name, path in paths.items()}


@pytest.fixture
def two(uris):
    """An app serving node a as 'a' and node b as 'b' (so 'a', the first, is the default)."""
    app = make_app(connections=uris)
    yield Client(app)
    app.close()


def names(client, connection):
    response = client.get('/libvirt/%s/nodes/json' % connection, query='all=1')
    assert response.status == 200
    return sorted(domain['domain']['name'] for domain in response.json)


def events(client, connection):
    """The events the connection's ring kept, replayed, as (domain, event)."""
    response = client.get('/libvirt/%s/events' % connection, query='since=0&timeout=0.2')
    assert response.status == 200
    return [(record['Domain']['Name'], record['Event'])
            for record in map(json.loads, filter(bytes.strip, response.body.splitlines()))
            if 'Domain' in record]


# -- side by side ---------------------------------------------------------------------------

def test_two_nodes_side_by_side_each_see_only_their_own_domains(two):
    assert names(two, 'a') == ['db', 'frozen', 'idle', 'scratch', 'web']
    assert names(two, 'b') == ['build', 'mail']
    assert two.get('/libvirt/a/nodes/mail/json').status == 404
    assert two.post('/libvirt/b/nodes/build/start').status == 204
    assert two.get('/libvirt/b/nodes/build/json').status == 200
    assert two.post('/libvirt/a/nodes/idle/start').status == 204
    assert events(two, 'a') == [('idle', 'started')]
    assert events(two, 'b') == [('build', 'started')]


def test_each_connection_has_its_own_libvirt_connection_hub_and_uploads(two):
    a, b = two.app.hypervisors['a'], two.app.hypervisors['b']
    assert a.connection is not b.connection and a.events is not b.events
    assert a.uploads is not b.uploads and a.features is not b.features
    two.get('/libvirt/a/nodes/json')
    assert (a.connection.connects, b.connection.connects) == (1, 0)  # opened when first used


def test_info_per_connection_and_for_the_default(two):
    assert two.get('/libvirt/b/info').json['Domains'] == {'running': 1, 'paused': 0,
                                                          'shutoff': 1, 'other': 0}
    assert two.get('/info').json == two.get('/libvirt/a/info').json  # a: the first, the default


def test_xen_is_the_default_wherever_it_is_listed(uris):
    client = Client(make_app(connections={'b': uris['b'], 'xen': uris['a']}))
    assert list(client.app.hypervisors) == ['xen', 'b']
    assert client.get('/info').json['Domains']['running'] == 3
    assert client.get('/libvirt/xen/nodes/web/json').status == 200


def test_an_unknown_connection_is_404_with_its_own_code(two):
    for path in ('/libvirt/c/nodes/json', '/libvirt/xen/info', '/libvirt/c/events'):
        response = two.get(path)
        assert response.status == 404
        assert response.json['code'] == 'no_such_connection'
        assert 'configured: a, b' in response.json['message']


@pytest.mark.parametrize('name', ['xen', 'dom0-a', 'kvm.example', 'host_2', '0', 'a' * 63])
def test_names_that_follow_the_pattern(name):
    assert check_name(name) == name


@pytest.mark.parametrize('name', ['', 'Xen', '-a', '.', '..', 'a/b', 'a b', 'a,b', 'a@b', 'a:b',
                                  'é', 'a' * 64])
def test_names_that_do_not(name, uris):
    with pytest.raises(ValueError, match='lowercase letters'):
        make_app(connections={name: uris['a']})


def test_a_name_given_twice_is_refused(uris):
    with pytest.raises(ValueError, match='given twice'):
        make_app(uri=uris['a'], connections={'xen': uris['b']})


# -- one connection down --------------------------------------------------------------------

@pytest.fixture
def one_down(uris, tmp_path):
    app = make_app(connections={'up': uris['a'], 'down': 'test://%s' % (tmp_path / 'absent.xml')})
    yield Client(app)
    app.close()


def test_a_connection_that_cannot_be_opened_is_503_on_its_own_routes_only(one_down):
    for path in ('/nodes/json', '/nodes/web/json', '/info', '/images/json', '/events'):
        response = one_down.get('/libvirt/down' + path)
        assert response.status == 503, path
        assert response.json['code'] == 'hypervisor_unavailable'
        assert one_down.get('/libvirt/up' + path, query='timeout=0').status == 200, path
    assert one_down.post('/libvirt/down/nodes/web/destroy').status == 503
    assert one_down.post('/libvirt/up/nodes/web/destroy').status == 204


def test_the_listing_says_which_connection_is_down_and_why(one_down, uris):
    listed = {item['Name']: item for item in one_down.get('/libvirt/json').json}
    assert list(listed) == ['up', 'down']
    assert listed['up'] == {'Name': 'up', 'Uri': uris['a'], 'Connected': True, 'Driver': 'TEST',
                            'Hostname': listed['up']['Hostname'], 'Error': None,
                            'LibvirtVersion': listed['up']['LibvirtVersion'],
                            'HypervisorVersion': listed['up']['HypervisorVersion'],
                            'Maintenance': False}
    assert listed['up']['Hostname'] and listed['up']['LibvirtVersion']
    down = listed['down']
    assert (down['Connected'], down['Driver'], down['Hostname']) == (False, None, None)
    assert 'absent.xml does not exist' in down['Error']


def test_version_answers_for_every_connection_up_or_down(one_down):
    response = one_down.get('/version')
    assert response.status == 200
    connections = response.json['Connections']
    assert connections['up']['Connected'] is True and connections['up']['Hypervisor'] == 'TEST'
    assert connections['down'] == {'Connected': False, 'Hypervisor': None,
                                   'DaemonLibvirtVersion': None, 'HypervisorVersion': None}
    assert response.json['Hypervisor'] == 'TEST'  # the default's ('up', the first)


def test_metrics_label_every_connection_and_say_which_is_down(one_down):
    one_down.get('/libvirt/up/nodes/json')
    samples = _samples(one_down.get('/metrics').body.decode())
    assert samples['xend_libvirt_up', '{connection="up"}'] == 1
    assert samples['xend_libvirt_up', '{connection="down"}'] == 0
    assert samples['xend_libvirt_connects_total', '{connection="down"}'] == 0
    assert samples['xend_events_total', '{connection="up"}'] == 0
    domains = [labels for name, labels in samples if name == 'xend_domain_state']
    assert domains and all(labels.startswith('{connection="up",domain=') for labels in domains)
    route = '{route="GET /libvirt/down/nodes/{ident}/json",status="503"}'
    one_down.get('/libvirt/down/nodes/web/json')
    assert _samples(one_down.get('/metrics').body.decode())['xend_http_requests_total', route] == 1


def test_metrics_of_two_nodes_keep_their_domains_apart(two):
    samples = _samples(two.get('/metrics').body.decode())
    states = {labels for name, labels in samples if name == 'xend_domain_state'}
    assert any(label.startswith('{connection="b",domain="mail"') for label in states)
    assert not any('connection="a",domain="mail"' in label for label in states)


def test_a_connection_that_hangs_is_asked_once_however_often_it_is_listed(two, monkeypatch):
    release, calls = threading.Event(), []

    def hanging_open():
        calls.append(1)
        release.wait(10)
        raise unavailable('gone')

    monkeypatch.setattr(two.app.hypervisors['b'].connection, 'get', hanging_open)
    monkeypatch.setattr(defaults, 'LISTING_WAIT', 0.2)
    try:
        for _ in range(3):
            started = time.monotonic()
            listed = {item['Name']: item['Connected'] for item in two.get('/libvirt/json').json}
            assert time.monotonic() - started < 1
            assert listed == {'a': True, 'b': False}
        assert calls == [1]
    finally:
        release.set()


def test_the_uri_shown_has_no_password():
    assert public_uri('xen+ssh://root:s3cret@dom0.example/system?keyfile=/k') == \
        'xen+ssh://root@dom0.example/system?keyfile=/k'
    assert public_uri('xen+tls://dom0.example/system') == 'xen+tls://dom0.example/system'


def test_openapi_names_the_configured_connections(two):
    spec = two.get('/openapi.json').json
    parameter = spec['paths']['/libvirt/{connection}/info']['get']['parameters'][0]
    assert parameter['schema'] == {'type': 'string', 'enum': ['a', 'b']}
    assert openapi.document(two.app.router.routes, ['a', 'b']) == spec


# -- credentials limited to some connections --------------------------------------------------

@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / 'tokens'
    path.write_text('%s operator@a a-bot\n%s read@b,x\n%s admin\n' % (
        TOKENS['a-operator'], TOKENS['b-reader'], TOKENS['everything']))
    path.chmod(0o600)
    return path


@pytest.fixture
def scoped(uris, tmp_path, tokens_file):
    app = make_app(connections={**uris, 'x': 'test://%s' % (tmp_path / 'absent.xml')},
                   guard=Guard(tokens=security.load_tokens(str(tokens_file))))
    yield Client(app)
    app.close()


def as_(client, who, method, path, query=''):
    return client.request(method, path, query=query,
                          headers={'HTTP_AUTHORIZATION': 'Bearer ' + TOKENS[who]})


def test_the_tokens_file_says_which_connections_a_token_covers(tokens_file):
    tokens = security.load_tokens(str(tokens_file))
    assert tokens[TOKENS['a-operator']] == (security.Grant('operator', {'a'}), 'a-bot')
    assert tokens[TOKENS['b-reader']] == (security.Grant('read', {'b', 'x'}), 'line 2')
    assert tokens[TOKENS['everything']] == (security.Grant('admin', None), 'line 3')


def test_a_connection_a_token_does_not_cover_is_one_that_does_not_exist(scoped):
    """What a credential cannot act on, it cannot see: not even that it is there."""
    assert as_(scoped, 'a-operator', 'POST', '/libvirt/a/nodes/idle/start').status == 204
    for method, path in (('GET', '/libvirt/{}/nodes/json'), ('GET', '/libvirt/{}/info'),
                         ('POST', '/libvirt/{}/nodes/build/start'), ('GET', '/libvirt/{}/events'),
                         ('POST', '/libvirt/{}/nodes/create')):
        for name in ('b', 'c'):  # b is configured, c is not: the answers differ in the name only
            response = as_(scoped, 'a-operator', method, path.format(name))
            assert response.status == 404, path
            assert response.json == {'code': 'no_such_connection', 'message': 'no such '
                                     f'hypervisor connection: {name} (configured: a)'}
    assert scoped.app.hypervisors['b'].connection.connects == 0  # refused before libvirt
    response = as_(scoped, 'everything', 'GET', '/libvirt/c/nodes/json')
    assert response.json['message'] == 'no such hypervisor connection: c (configured: a, b, x)'


def test_the_role_still_applies_within_the_covered_connections(scoped):
    response = as_(scoped, 'b-reader', 'POST', '/libvirt/b/nodes/build/start')
    assert response.status == 403 and 'needs the operator role' in response.json['message']
    assert as_(scoped, 'b-reader', 'GET', '/libvirt/b/nodes/json').status == 200


def test_the_default_connections_info_needs_the_default_connection(scoped):
    assert as_(scoped, 'a-operator', 'GET', '/info').status == 200  # a: the default
    response = as_(scoped, 'b-reader', 'GET', '/info')
    assert response.status == 403
    assert response.json['message'] == 'this route acts on the default connection, which your ' \
        'credentials do not cover (only b, x)'  # and does not name it
    assert as_(scoped, 'b-reader', 'GET', '/_ping').status == 200
    assert as_(scoped, 'b-reader', 'GET', '/openapi.json').status == 200


def test_listings_show_only_the_connections_a_token_covers(scoped):
    listed = as_(scoped, 'b-reader', 'GET', '/libvirt/json').json
    assert [item['Name'] for item in listed] == ['b', 'x']
    version = as_(scoped, 'b-reader', 'GET', '/version').json
    assert set(version['Connections']) == {'b', 'x'}
    assert version['Hypervisor'] is None  # the default connection's, which it does not cover
    metrics = as_(scoped, 'b-reader', 'GET', '/metrics').body.decode()
    assert 'connection="b"' in metrics and 'connection="a"' not in metrics
    assert [item['Name'] for item in as_(scoped, 'everything', 'GET', '/libvirt/json').json] == \
        ['a', 'b', 'x']


def test_metrics_count_the_requests_of_the_covered_connections_only(scoped):
    """The request counters of another connection's routes say what is done there, and its name."""
    for who, path in (('a-operator', '/libvirt/a/nodes/json'), ('a-operator', '/info'),
                      ('b-reader', '/libvirt/b/nodes/json'), ('everything', '/libvirt/x/info'),
                      ('everything', '/libvirt/c/nodes/json'), ('b-reader', '/_ping')):
        as_(scoped, who, 'GET', path)
    text = as_(scoped, 'b-reader', 'GET', '/metrics').body.decode()
    requests = {labels for name, labels in _samples(text) if name == 'xend_http_requests_total'}
    assert requests == {'{route="GET /libvirt/b/nodes/json",status="200"}',
                        '{route="GET /libvirt/x/info",status="503"}',
                        '{route="unmatched",status="404"}',  # c: no such connection
                        '{route="GET /_ping",status="200"}'}
    text = as_(scoped, 'everything', 'GET', '/metrics').body.decode()
    assert 'route="GET /libvirt/a/nodes/json",status="200"' in text
    assert 'route="GET /info",status="200"' in text


def test_daemon_wide_totals_are_for_credentials_that_cover_every_connection(scoped):
    """The console totals count the sessions of every connection together."""
    assert 'xend_console_sessions' in as_(scoped, 'everything', 'GET', '/metrics').body.decode()
    assert 'xend_console_sessions' not in as_(scoped, 'b-reader', 'GET', '/metrics').body.decode()


def test_openapi_names_only_the_covered_connections(scoped):
    def enum(who):
        spec = as_(scoped, who, 'GET', '/openapi.json').json
        return spec['paths']['/libvirt/{connection}/info']['get']['parameters'][0]['schema']['enum']
    assert enum('b-reader') == ['b', 'x']
    assert enum('a-operator') == ['a']
    assert enum('everything') == ['a', 'b', 'x']


def test_ping_says_whether_the_default_connection_is_up_only_to_those_it_covers(scoped):
    as_(scoped, 'a-operator', 'GET', '/info')  # a, the default, is now connected
    assert as_(scoped, 'a-operator', 'GET', '/_ping').headers['Libvirt-Connected'] == 'true'
    response = as_(scoped, 'b-reader', 'GET', '/_ping')
    assert response.status == 200 and 'Libvirt-Connected' not in response.headers


def test_a_tls_client_may_be_limited_to_some_connections(uris):
    clients = security.parse_tls_clients('alice monitor:read@b ops:operator@a,b')
    assert clients == {'alice': security.Grant('admin', None),
                       'monitor': security.Grant('read', {'b'}),
                       'ops': security.Grant('operator', {'a', 'b'})}
    client = Client(make_app(connections=uris, guard=Guard(tls_clients=clients)))

    def call(cn, method, path):
        subject = ((('commonName', cn),),)
        return client.request(method, path, headers={'xend_rest.transport': 'tls',
                                                     'xend_rest.client_subject': subject}).status

    assert call('monitor', 'GET', '/libvirt/a/nodes/json') == 404
    assert call('monitor', 'GET', '/libvirt/b/nodes/json') == 200
    assert call('ops', 'POST', '/libvirt/b/nodes/build/start') == 204
    assert call('alice', 'GET', '/libvirt/a/nodes/json') == 200


@pytest.mark.parametrize('text', ['read@', 'read@B', 'read@a,', 'root@a', 'read@a@b'])
def test_a_bad_connection_list_is_refused(text):
    with pytest.raises(ConfigError):
        security.parse_tls_clients('alice:' + text)


def test_a_credential_limited_to_an_unknown_connection_is_refused_at_start(uris):
    guard = Guard(tls_clients=security.parse_tls_clients('monitor:read@c'))
    with pytest.raises(ConfigError, match='limited to c, which is not a configured connection'):
        make_app(connections=uris, guard=guard)
