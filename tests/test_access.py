"""Who may call what: bearer tokens and roles, TLS client names, Host and Origin, body types.
Every refusal is a JSON error and leaves the hypervisor as it was."""
import copy

import libvirt
import pytest

from conftest import Client
from test_create import TEST0
from xend_rest import defaults
from xend_rest.api import security
from xend_rest.api.app import make_app
from xend_rest.api.router import Router, path_segments
from xend_rest.api.routes import ROUTES, Route
from xend_rest.api.security import ConfigError, Guard, load_tokens
from xend_rest.errors import HTTPError

NODES = '/libvirt/xen/nodes'
TOKENS = {'read': 'r' * 32, 'operator': 'o' * 32, 'admin': 'a' * 32}


@pytest.fixture
def make_client(node_uri):
    """Clients of apps with a guard of the test's choosing, on this test's node."""
    apps = []

    def make(**guard_settings):
        app = make_app(uri=node_uri, guard=Guard(**guard_settings))
        apps.append(app)
        return Client(app)
    yield make
    for app in apps:
        app.close()


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / 'tokens'
    path.write_text('# token role name\n' + ''.join(
        '%s %s %s-bot\n' % (token, role, role) for role, token in TOKENS.items()))
    path.chmod(0o600)
    return path


@pytest.fixture
def locked(make_client, tokens_file):
    return make_client(tokens=load_tokens(str(tokens_file)))


def bearer(role):
    return {'HTTP_AUTHORIZATION': 'Bearer ' + TOKENS[role]}


def state(api, name):
    return api.conn.lookupByName(name).state()[0]


def defined_names(api):
    return sorted(dom.name() for dom in api.conn.listAllDomains())


# -- bearer tokens --------------------------------------------------------------------------

@pytest.mark.parametrize('headers', [
    {}, {'HTTP_AUTHORIZATION': 'Bearer ' + 'x' * 32}, {'HTTP_AUTHORIZATION': 'Bearer '},
    {'HTTP_AUTHORIZATION': 'Basic ' + TOKENS['admin']}, {'HTTP_AUTHORIZATION': TOKENS['admin']},
    {'HTTP_AUTHORIZATION': 'Bearer ' + TOKENS['admin'][:-1]},
])
def test_without_a_valid_token_it_is_401_and_nothing_happens(locked, headers):
    response = locked.request('POST', NODES + '/web/destroy', headers=headers)
    assert response.status == 401
    assert response.json['code'] == 'unauthorized'
    assert response.headers['WWW-Authenticate'].startswith('Bearer realm="xend-rest"')
    assert state(locked, 'web') == libvirt.VIR_DOMAIN_RUNNING


def test_a_read_request_without_a_token_is_401_too(locked):
    response = locked.get(NODES + '/json')
    assert response.status == 401 and response.json['code'] == 'unauthorized'


# (method, path and query, body, the least role that may)
N = NODES
ROUTE_ROLES = [
    ('GET', N + '/json', None, 'read'),
    ('GET', N + '/web/json', None, 'read'),
    ('HEAD', N + '/web/json', None, 'read'),
    ('POST', N + '/web/wait?condition=running&timeout=0', None, 'read'),
    ('GET', N + '/web/stats', None, 'read'),
    ('GET', N + '/web/addresses', None, 'read'),
    ('GET', N + '/stats', None, 'read'),
    ('GET', '/libvirt/xen/events?timeout=0', None, 'read'),
    ('GET', '/_ping', None, 'read'),
    ('GET', '/version', None, 'read'),
    ('GET', '/info', None, 'read'),
    ('GET', '/libvirt/json', None, 'read'),
    ('GET', '/libvirt/xen/info', None, 'read'),
    ('GET', '/metrics', None, 'read'),
    ('GET', '/openapi.json', None, 'read'),
    ('POST', N + '/idle/start', None, 'operator'),
    ('POST', N + '/web/stop', None, 'operator'),
    ('POST', N + '/web/destroy', None, 'operator'),
    ('POST', N + '/web/restart', None, 'operator'),
    ('POST', N + '/web/suspend', None, 'operator'),
    ('POST', N + '/frozen/resume', None, 'operator'),
    ('GET', N + '/web/console', None, 'operator'),  # typing into a console acts on the guest
    ('POST', N + '/web/attach', None, 'operator'),
    ('GET', N + '/web/vnc', None, 'operator'),
    ('POST', N + '/web/console/ticket', None, 'operator'),
    ('POST', N + '/create', TEST0, 'admin'),
    ('POST', N + '/idle/delete', None, 'admin'),
    ('POST', N + '/web/autostart?enable=1', None, 'admin'),
    ('POST', N + '/web/devices/attach', {'disk': {'@type': 'file'}}, 'admin'),
    ('POST', N + '/web/devices/detach', {'disk': {'@type': 'file'}}, 'admin'),
    ('POST', N + '/web/devices/update', {'disk': {'@type': 'file'}}, 'admin'),
    ('POST', N + '/web/memory/resize?size=1048576', None, 'admin'),
    ('POST', N + '/web/vcpu/resize?size=1', None, 'admin'),
    ('GET', '/libvirt/xen/images/json', None, 'read'),
    ('GET', '/libvirt/xen/images/default/web.raw/json', None, 'read'),
    ('GET', '/libvirt/xen/images/default/web.raw/download', None, 'admin'),  # a guest's disk
    ('GET', '/libvirt/xen/pools/json', None, 'read'),
    ('GET', '/libvirt/xen/pools/default/json', None, 'read'),
    ('POST', '/libvirt/xen/images/default/create?name=new.raw&capacity=1M', None, 'admin'),
    ('POST', '/libvirt/xen/images/default/web.raw/clone?name=copy.raw', None, 'admin'),
    ('POST', '/libvirt/xen/images/default/web.raw/resize?capacity=2G', None, 'admin'),
    ('POST', '/libvirt/xen/images/default/web.raw/wipe', None, 'admin'),
    ('POST', '/libvirt/xen/images/default/web.raw/delete', None, 'admin'),
    ('PUT', '/libvirt/xen/images/default/new.raw/upload', None, 'admin'),
    ('GET', '/libvirt/xen/operations/json', None, 'read'),
    ('GET', '/libvirt/xen/operations/0b6e2f51-3c1d-4a8e-9d0f-5e7a1c2b3d4e/json', None, 'read'),
    ('POST', '/libvirt/xen/operations/0b6e2f51-3c1d-4a8e-9d0f-5e7a1c2b3d4e/cancel', None,
     'operator'),
    ('POST', N + '/web/migrate?to=xen', None, 'operator'),  # on both connections
    ('GET', '/libvirt/xen/maintenance/json', None, 'read'),
    ('POST', '/libvirt/xen/maintenance/enter', None, 'admin'),  # every guest of the host
    ('POST', '/libvirt/xen/maintenance/lift', None, 'admin'),
    ('POST', '/libvirt/xen/evacuate?to=xen', None, 'admin'),
    ('GET', '/libvirt/xen/networks/json', None, 'read'),
    ('GET', '/libvirt/xen/networks/default/json', None, 'read'),
    ('GET', '/libvirt/xen/networks/default/leases', None, 'read'),
    ('GET', '/libvirt/xen/bridges/json', None, 'read'),
    ('POST', '/libvirt/xen/networks/create', {'network': {'name': 'new'}}, 'admin'),
    ('POST', '/libvirt/xen/networks/default/start', None, 'operator'),
    ('POST', '/libvirt/xen/networks/default/stop', None, 'operator'),
    ('POST', '/libvirt/xen/networks/default/delete', None, 'admin'),
    ('POST', '/libvirt/xen/networks/default/autostart?enable=1', None, 'admin'),
]


def snapshot(api):
    """The domains and networks libvirt holds, to show a refusal changed nothing."""
    conn = api.conn
    return (sorted((dom.name(), dom.state()[0], dom.XMLDesc(0)) for dom in conn.listAllDomains()),
            sorted((net.name(), net.isActive(), net.autostart(), net.XMLDesc(0))
                   for net in conn.listAllNetworks(0)))


@pytest.mark.parametrize('method, path, body, needed', ROUTE_ROLES)
@pytest.mark.parametrize('role', security.ROLES)
def test_each_route_needs_its_role(locked, method, path, body, needed, role):
    before = snapshot(locked)
    path, _, query = path.partition('?')
    response = locked.request(method, path, body, query, headers=bearer(role))
    if security.ROLES.index(role) < security.ROLES.index(needed):
        assert response.status == 403
        assert response.json == {'code': 'forbidden', 'message':
                                  'this needs the %s role; your credentials have %s' % (needed, role)}
        assert snapshot(locked) == before
    else:
        assert response.status not in (401, 403)


def untested_routes(routes, table):
    """The (method, pattern) of each route that no row of table reaches: each row's method and
    whole path dispatched by the Router, as the app does (first matching route wins)."""
    router = Router(routes)
    reached = set()
    for method, path, _, _ in table:
        try:
            reached.add(router.find(method, path_segments(path.partition('?')[0], False))[0])
        except HTTPError:  # 404 or 405: the row reaches no route
            pass
    return [(route.method, route.path) for route in routes if route not in reached]


def test_the_table_above_covers_every_route():
    assert untested_routes(ROUTES, ROUTE_ROLES) == []


def test_a_new_route_missing_from_the_table_is_noticed():
    new = [Route('GET', '/libvirt/{connection}/nodes/{ident}/secrets/json', None),
           Route('POST', '/libvirt/{connection}/nodes/json', None),
           Route('GET', '/libvirt/{connection}/nodes/{ident}', None)]
    assert untested_routes(ROUTES + new, ROUTE_ROLES) == [(r.method, r.path) for r in new]


def test_an_unclassified_route_needs_admin(node_uri, tokens_file):
    def new_thing(request):
        return 200, {'done': True}
    app = make_app(uri=node_uri, guard=Guard(tokens=load_tokens(str(tokens_file))),
                   routes=[Route('GET', '/new', new_thing)])
    client = Client(app)
    try:
        for role in ('read', 'operator'):
            response = client.request('GET', '/new', headers=bearer(role))
            assert response.status == 403 and response.json['code'] == 'forbidden'
        assert client.request('GET', '/new', headers=bearer('admin')).json == {'done': True}
    finally:
        app.close()


def with_vnc_password(api):
    """TEST0 defined with a VNC password: what VIR_DOMAIN_XML_SECURE (flag=1) reveals."""
    doc = copy.deepcopy(TEST0)
    doc['domain']['devices']['graphics'] = {'@type': 'vnc', '@port': '-1', '@passwd': 's3cret'}
    assert api.request('POST', NODES + '/create', doc, headers=bearer('admin')).status == 201
    return 'test0'


def vnc_passwords(body):
    domains = body if isinstance(body, list) else [body]
    return [d['domain']['devices']['graphics'].get('@passwd') for d in domains
            if d['domain']['name'] == 'test0']


@pytest.mark.parametrize('path', [NODES + '/json?all=1&', NODES + '/test0/json?'])
@pytest.mark.parametrize('flag', ['1', '3', '9'])
@pytest.mark.parametrize('role', ['read', 'operator'])
def test_secrets_in_definitions_need_admin(locked, path, flag, role):
    with_vnc_password(locked)
    path, _, query = path.partition('?')
    response = locked.request('GET', path, query=query + 'flag=' + flag, headers=bearer(role))
    assert response.status == 403
    assert response.json == {'code': 'forbidden', 'message':
                             'flag=%s asks for secrets (VIR_DOMAIN_XML_SECURE): this needs the '
                             'admin role; your credentials have %s' % (flag, role)}
    response = locked.request('GET', path, query=query + 'flag=2', headers=bearer(role))
    assert response.status == 200 and vnc_passwords(response.json) == [None]
    response = locked.request('GET', path, query=query + 'flag=' + flag, headers=bearer('admin'))
    assert response.status == 200 and vnc_passwords(response.json) == ['s3cret']


@pytest.mark.parametrize('flag', ['x', '-1', '9' * 5000, '1' * 21])
def test_a_flag_that_is_not_a_number_is_still_400_for_readers(locked, flag):
    response = locked.request('GET', NODES + '/web/json', query='flag=' + flag,
                              headers=bearer('read'))
    assert response.status == 400 and response.json['code'] == 'bad_parameter'


def test_operator_starts_but_cannot_create(locked):
    assert locked.request('POST', NODES + '/idle/start', headers=bearer('operator')).status == 204
    assert state(locked, 'idle') == libvirt.VIR_DOMAIN_RUNNING
    response = locked.request('POST', NODES + '/create', TEST0, headers=bearer('operator'))
    assert response.status == 403
    assert 'test0' not in defined_names(locked)


def test_admin_creates(locked):
    response = locked.request('POST', NODES + '/create', TEST0, headers=bearer('admin'))
    assert response.status == 201
    assert 'test0' in defined_names(locked)


def test_unix_socket_callers_are_admin_without_a_token(locked):
    response = locked.request('POST', NODES + '/web/destroy',
                              headers={'xend_rest.transport': 'unix'})
    assert response.status == 204
    assert state(locked, 'web') == libvirt.VIR_DOMAIN_SHUTOFF


def test_a_token_on_the_unix_socket_still_must_be_valid(locked):
    response = locked.request('POST', NODES + '/web/destroy', headers={
        'xend_rest.transport': 'unix', 'HTTP_AUTHORIZATION': 'Bearer nope'})
    assert response.status == 401
    assert state(locked, 'web') == libvirt.VIR_DOMAIN_RUNNING


def test_a_client_cannot_claim_the_unix_socket_with_a_header(locked):
    # Headers become HTTP_* keys: only the server can set xend_rest.transport.
    response = locked.request('POST', NODES + '/web/destroy',
                              headers={'HTTP_XEND_REST.TRANSPORT': 'unix'})
    assert response.status == 401


# -- TLS client certificates ----------------------------------------------------------------

def tls(cn):
    """A TLS request's environ as our server gives it: the verified certificate's subject."""
    return {'xend_rest.transport': 'tls', 'xend_rest.client_subject': ((('commonName', cn),),)}


def test_any_verified_client_is_admin_without_an_allow_list(make_client):
    client = make_client()
    assert client.request('POST', NODES + '/idle/delete', headers=tls('alice')).status == 204
    assert 'idle' not in defined_names(client)


def test_allowed_clients_get_their_roles(make_client):
    client = make_client(tls_clients=security.parse_tls_clients('alice monitor:read'))
    response = client.request('POST', NODES + '/web/destroy', headers=tls('monitor'))
    assert response.status == 403 and response.json['code'] == 'forbidden'
    assert client.request('GET', NODES + '/json', headers=tls('monitor')).status == 200
    response = client.request('POST', NODES + '/web/destroy', headers=tls('mallory'))
    assert response.status == 403
    assert response.json == {'code': 'forbidden',
                             'message': 'client certificate CN=mallory is not allowed'}
    assert state(client, 'web') == libvirt.VIR_DOMAIN_RUNNING
    assert client.request('POST', NODES + '/web/destroy', headers=tls('alice')).status == 204


def test_with_allowed_clients_a_certificate_without_a_cn_gets_nothing(make_client):
    client = make_client(tls_clients=security.parse_tls_clients('alice'))
    response = client.request('POST', NODES + '/web/destroy', headers={'xend_rest.transport': 'tls'})
    assert response.status == 403
    assert response.json == {'code': 'forbidden',
                             'message': 'a client certificate without a CN is not allowed'}
    assert state(client, 'web') == libvirt.VIR_DOMAIN_RUNNING


def test_a_token_outranks_the_certificate(make_client, tokens_file):
    client = make_client(tokens=load_tokens(str(tokens_file)))
    headers = {**tls('alice'), **bearer('read')}
    assert client.request('POST', NODES + '/web/destroy', headers=headers).status == 403


def test_tls_client_roles_must_be_known():
    with pytest.raises(ConfigError):
        security.parse_tls_clients('alice:root')


# -- the tokens file ------------------------------------------------------------------------

@pytest.mark.parametrize('mode', [0o640, 0o604, 0o644, 0o620, 0o601])
def test_a_tokens_file_others_can_touch_is_refused(tokens_file, mode):
    tokens_file.chmod(mode)
    with pytest.raises(ConfigError, match='chmod 600'):
        load_tokens(str(tokens_file))


@pytest.mark.parametrize('text', [
    '', '# only a comment\n', 'short admin\n', '%s root\n' % ('x' * 32),
    '%s\n' % ('x' * 32), '%s admin\n%s read\n' % ('x' * 32, 'x' * 32),
])
def test_a_bad_tokens_file_is_refused(tmp_path, text):
    path = tmp_path / 'tokens'
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError):
        load_tokens(str(path))


def test_a_missing_tokens_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match='cannot read'):
        load_tokens(str(tmp_path / 'absent'))


# -- Host and Origin ------------------------------------------------------------------------

@pytest.mark.parametrize('host', ['localhost', 'localhost:8000', '127.0.0.1:8000', '[::1]:8000',
                                  'LOCALHOST.', 'xen1.example.org', 'xen1.example.org:443'])
def test_own_names_are_accepted(make_client, host):
    client = make_client(allowed_hosts=['xen1.example.org'])
    assert client.request('GET', NODES + '/json', headers={'HTTP_HOST': host}).status == 200


@pytest.mark.parametrize('host', ['evil.example', 'evil.example:8000', '127.0.0.1.evil.example',
                                  'localhost.evil', '[::2]:8000', '10.0.0.1'])
def test_a_foreign_host_is_403_and_nothing_happens(make_client, host):
    client = make_client(allowed_hosts=['xen1.example.org'])
    response = client.request('POST', NODES + '/web/destroy', headers={'HTTP_HOST': host})
    assert response.status == 403
    assert response.json['code'] == 'foreign_host'
    assert state(client, 'web') == libvirt.VIR_DOMAIN_RUNNING


def test_the_host_name_is_accepted(make_client):
    host = sorted(security.own_names() - set(security.LOOPBACK_HOSTS))[0]
    assert make_client().request('GET', NODES + '/json', headers={'HTTP_HOST': host}).status == 200


def test_a_wildcard_accepts_any_host(make_client):
    client = make_client(allowed_hosts=['*'])
    assert client.request('GET', NODES + '/json', headers={'HTTP_HOST': 'a.b'}).status == 200


def test_the_unix_socket_takes_any_host(make_client):
    headers = {'HTTP_HOST': '%2Frun%2Fxend-rest%2Fapi.sock', 'xend_rest.transport': 'unix'}
    assert make_client().request('GET', NODES + '/json', headers=headers).status == 200


@pytest.mark.parametrize('headers', [
    {'HTTP_ORIGIN': 'https://evil.example'}, {'HTTP_ORIGIN': 'http://localhost:8000'},
    {'HTTP_ORIGIN': 'null'}, {'HTTP_SEC_FETCH_SITE': 'cross-site'},
    {'HTTP_SEC_FETCH_SITE': 'same-origin'},
])
def test_a_request_from_a_web_page_is_403_and_nothing_happens(locked, headers):
    response = locked.request('POST', NODES + '/web/destroy',
                              headers={**headers, **bearer('admin')})
    assert response.status == 403
    assert response.json['code'] == 'cross_origin'
    assert state(locked, 'web') == libvirt.VIR_DOMAIN_RUNNING


# -- body types -----------------------------------------------------------------------------

@pytest.mark.parametrize('content_type', [
    'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', '',
    'application/octet-stream', 'application/json-seq', 'text/json'])
def test_a_body_that_is_not_json_is_415_and_nothing_happens(api, content_type):
    response = api.request('POST', NODES + '/create', TEST0, headers={'CONTENT_TYPE': content_type})
    assert response.status == 415
    assert response.json['code'] == 'unsupported_media_type'
    assert 'test0' not in defined_names(api)


def test_a_form_post_to_an_action_is_415(api):
    response = api.request('POST', NODES + '/web/destroy', b'a=1',
                           headers={'CONTENT_TYPE': 'application/x-www-form-urlencoded'})
    assert response.status == 415
    assert state(api, 'web') == libvirt.VIR_DOMAIN_RUNNING


def test_json_with_parameters_is_json(api):
    response = api.request('POST', NODES + '/create', TEST0,
                           headers={'CONTENT_TYPE': 'Application/JSON; charset=utf-8'})
    assert response.status == 201


def test_a_route_may_take_octet_streams(node_uri, monkeypatch):
    def upload(request):
        return 201, {'size': len(request.environ['wsgi.input'].read(100))}
    app = make_app(uri=node_uri, routes=[Route('PUT', '/upload', upload, body=defaults.OCTETS)])
    client = Client(app)
    try:
        octets = {'CONTENT_TYPE': 'application/octet-stream'}
        assert client.request('PUT', '/upload', b'\0' * 10, headers=octets).json == {'size': 10}
        assert client.request('PUT', '/upload', b'{}').status == 415
    finally:
        app.close()
