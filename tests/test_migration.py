"""Migrate (docs/api.md, Migrate a domain): its refusals, each before anything is done, and the
501 of a driver that does not migrate (the test driver). A migration itself is the QEMU tier's."""
import libvirt
import pytest

from conftest import WEB_UUID, Client, node_xml
from test_connections import TOKENS, as_
from xend_rest.api import security
from xend_rest.api.app import make_app
from xend_rest.api.security import Guard
from xend_rest.hypervisor.moves import migration

MIGRATE = '/libvirt/a/nodes/web/migrate'


@pytest.fixture
def nodes(tmp_path):
    """Two test nodes, a and b, and a2: a second connection to node a's file."""
    for name in ('a', 'b'):
        (tmp_path / f'{name}.xml').write_text(node_xml())
    return {'a': f"test://{tmp_path / 'a.xml'}", 'b': f"test://{tmp_path / 'b.xml'}",
            'a2': f"test://{tmp_path / 'a.xml'}"}


@pytest.fixture
def three(nodes):
    app = make_app(connections=nodes)
    yield Client(app)
    app.close()


def unchanged(client):
    """Each node's domains and their states (web still running on a, absent from b)."""
    return {name: sorted((dom.name(), dom.state()[0]) for dom in
                         client.app.hypervisors[name].connection.get().listAllDomains())
            for name in ('a', 'b')}


def test_a_driver_that_does_not_migrate_is_501_and_nothing_happens(three):
    before = unchanged(three)
    response = three.post(MIGRATE, query='to=b')
    assert response.status == 501 and response.json['code'] == 'not_supported'
    assert 'does not migrate' in response.json['message']
    assert unchanged(three) == before
    assert three.get('/libvirt/a/operations/json').json == []  # no operation was started


def test_the_test_driver_reports_no_host_uuid_so_its_uri_tells_hosts_apart(three):
    """Two connections to one node file are one hypervisor; the test driver's capabilities
    have no host UUID, so the URI libvirt reports decides there."""
    a, a2, b = (three.app.hypervisors[name].connection.get() for name in ('a', 'a2', 'b'))
    assert migration.host_of(a) == migration.host_of(a2) == ('uri', a.getURI())
    assert migration.host_of(a) != migration.host_of(b)
    assert not migration.migrates(a)


@pytest.mark.parametrize('query', ['to=a2', 'to=a'])
def test_the_same_hypervisor_is_400(three, query):
    before = unchanged(three)
    response = three.post(MIGRATE, query=query)
    assert response.status == 400 and response.json['code'] == 'same_hypervisor'
    assert unchanged(three) == before


@pytest.mark.parametrize('query, status, code', [
    ('', 400, 'bad_parameter'),
    ('to=', 400, 'bad_parameter'),
    ('to=c', 404, 'no_such_connection'),
    ('to=b&bandwidth=0', 400, 'bad_parameter'),
    ('to=b&bandwidth=lots', 400, 'bad_parameter'),
    ('to=b&downtime=0', 400, 'bad_parameter'),
    ('to=b&downtime=-5', 400, 'bad_parameter'),
    ('to=b&downtime=300', 501, 'not_supported'),
    ('to=b&persist=maybe', 400, 'bad_parameter'),
])
def test_refusals_of_the_query(three, query, status, code):
    before = unchanged(three)
    response = three.post(MIGRATE, query=query)
    assert (response.status, response.json['code']) == (status, code)
    assert unchanged(three) == before


def test_an_unknown_domain_and_dom0_are_refused(three):
    assert three.post('/libvirt/a/nodes/nosuch/migrate', query='to=b').status == 404
    assert three.post('/libvirt/a/nodes/Domain-0/migrate', query='to=b').json['code'] == \
        'dom0_refused'


def test_a_domain_with_an_operation_in_flight_is_409(three):
    import threading
    release = threading.Event()
    dom = three.app.hypervisors['a'].connection.get().lookupByName('web')
    operation = three.app.operations.start('shutdown', three.app.hypervisors['a'], dom,
                                           lambda: release.wait(20))
    response = three.post(MIGRATE, query='to=b')
    assert response.status == 409 and response.json['operation'] == operation.id
    release.set()


@pytest.fixture
def scoped(nodes, tmp_path):
    tokens = tmp_path / 'tokens'
    tokens.write_text('%s operator@a a-bot\n%s admin\n%s read\n%s operator\n' % (
        TOKENS['a-operator'], TOKENS['everything'], 'r' * 32, 'o' * 32))
    tokens.chmod(0o600)
    app = make_app(connections=nodes, guard=Guard(tokens=security.load_tokens(str(tokens))))
    yield Client(app)
    app.close()


def test_a_destination_the_credentials_do_not_cover_is_one_that_does_not_exist(scoped):
    """403 unless the caller may operate on both: a connection it does not cover it cannot
    see (404, as everywhere); a role below operator is 403."""
    response = as_(scoped, 'a-operator', 'POST', MIGRATE, query='to=b')
    assert response.status == 404 and response.json['code'] == 'no_such_connection'
    assert as_(scoped, 'a-operator', 'POST', MIGRATE, query='to=c').json['message'] == \
        as_(scoped, 'a-operator', 'POST', MIGRATE, query='to=b').json['message'].replace(
            ': b ', ': c ')
    reader = scoped.request('POST', MIGRATE, query='to=b',
                            headers={'HTTP_AUTHORIZATION': 'Bearer ' + 'r' * 32})
    assert reader.status == 403 and reader.json['code'] == 'forbidden'


@pytest.mark.parametrize('option', ['persist=1', 'undefine=1'])
def test_persist_and_undefine_are_admin_changes(scoped, option):
    operator = scoped.request('POST', MIGRATE, query='to=b&' + option,
                              headers={'HTTP_AUTHORIZATION': 'Bearer ' + 'o' * 32})
    assert operator.status == 403 and 'admin role' in operator.json['message']
    admin = as_(scoped, 'everything', 'POST', MIGRATE, query='to=b&' + option)
    assert admin.status == 501  # past the role: the test driver does not migrate


def test_the_destinations_definition_passes_the_host_path_policy(nodes, tmp_path):
    """web's disk (/var/lib/xen/images/web.raw) is outside the allowed paths: the destination
    would be handed a host path the policy refuses, as a Create there would be."""
    allowed = tmp_path / 'images'
    allowed.mkdir()
    app = make_app(connections=nodes, guard=Guard(allowed_paths=[str(allowed)]))
    client = Client(app)
    response = client.post(MIGRATE, query='to=b')
    assert response.status == 403 and response.json['code'] == 'path_not_allowed'
    assert 'web.raw' in response.json['message']
    app.close()


def test_an_offline_migration_moves_the_definition_and_is_an_admin_change(scoped):
    """A shut-off domain's migration defines it on the destination and undefines it here
    (issue 23): a change of definitions, like persist=1, for the admin role only
    (test_migration_offline.py moves one)."""
    idle = MIGRATE.replace('web', 'idle')
    operator = scoped.request('POST', idle, query='to=b',
                              headers={'HTTP_AUTHORIZATION': 'Bearer ' + 'o' * 32})
    assert operator.status == 403 and 'admin role' in operator.json['message']
    admin = as_(scoped, 'everything', 'POST', idle, query='to=b')
    assert admin.json['code'] == 'already_exists'  # past the role: b has an idle of its own
    running = scoped.request('POST', MIGRATE, query='to=b',
                             headers={'HTTP_AUTHORIZATION': 'Bearer ' + 'o' * 32})
    assert running.status == 501  # a live migration is an operator's


def test_flags_and_parameters_are_those_virsh_would_send():
    live = migration.flags(False, False)
    assert live == libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_LIVE
    moving = migration.flags(True, True)
    assert moving == (libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_LIVE
                      | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


def test_the_migration_settings_are_per_connection(tmp_path):
    """A [connection NAME] section says how the other hosts reach its host; the others keep
    libvirt's defaults (None)."""
    from xend_rest.cli import parse_args, settings_from
    from xend_rest.hypervisor.libvirt_connection import LibvirtSettings
    path = tmp_path / 'xend-rest.conf'
    path.write_text('[connection dom0-a]\nuri = xen+tls://a.example/system\n'
                    '[connection dom0-b]\nuri = xen+tls://b.example/system\n'
                    'migration-uri = xen+tls://b.mgmt.example/system\n'
                    'migration-address = 10.20.0.2\n')
    args = parse_args(['--config', str(path)])
    settings = {c['name']: settings_from(LibvirtSettings, c) for c in args.connections}
    assert (settings['dom0-b'].migration_uri, settings['dom0-b'].migration_address) == (
        'xen+tls://b.mgmt.example/system', '10.20.0.2')
    assert (settings['dom0-a'].migration_uri, settings['dom0-a'].migration_address) == (None, None)


def test_the_destination_uri_and_address_come_from_the_destinations_settings(nodes):
    from xend_rest.hypervisor.libvirt_connection import SharedConnection
    plain = SharedConnection(nodes['b'])
    assert migration.destination_uri(plain) == nodes['b']
    assert migration.parameters(plain.settings) == {}
    told = SharedConnection(nodes['b'], migration_uri='qemu+tcp://10.77.0.2/system',
                            migration_address='tcp://10.77.0.2')
    assert migration.destination_uri(told) == 'qemu+tcp://10.77.0.2/system'
    assert migration.parameters(told.settings, 5) == {
        libvirt.VIR_MIGRATE_PARAM_URI: 'tcp://10.77.0.2', libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 5}



@pytest.fixture
def silent_libvirtd(tmp_path):
    """The URI of a libvirtd that accepts connections and never answers."""
    import socket
    import threading
    path = str(tmp_path / 'silent.sock')
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(8)],
                     daemon=True).start()
    yield f'qemu+unix:///system?socket={path}'
    listener.close()


def test_reading_progress_from_a_libvirtd_that_never_answers_gives_up_after_the_open_timeout(
        silent_libvirtd):
    """The progress reader's own connection is opened as the pool's: within open_timeout,
    not blocked for ever (a thread lost per operation) by a libvirtd that accepts and never
    answers; the operation goes on without progress."""
    import threading
    from xend_rest.hypervisor.hypervisors import Hypervisor
    from xend_rest.hypervisor.libvirt_connection import SharedConnection
    from xend_rest.hypervisor.moves.operations import Operation
    silent = Hypervisor('silent', SharedConnection(silent_libvirtd, open_timeout=0.5))
    silent.host = lambda: None  # asked when the operation is made: not what is tested here
    operation = Operation('migrate', silent, None, 'test', True,
                          target={'Name': 'web', 'Uuid': '6695eb01-f6a4-8304-79aa-97f2502e193f'})
    reader = threading.Thread(target=operation.follow, daemon=True)
    reader.start()
    reader.join(60)  # bounds a hang only; the open timeout is 0.5 s
    assert not reader.is_alive() and operation.running and operation.progress is None


def test_the_migrations_own_connection_to_a_libvirtd_that_never_answers_gives_up(
        silent_libvirtd):
    """The migration's own connection is opened as the pool's: against a source libvirtd that
    accepts and never answers, the operation fails 504 after open_timeout, rather than hold
    the domain (409 to every change) until the daemon restarts."""
    import threading
    from xend_rest.errors import HTTPError
    from xend_rest.hypervisor.libvirt_connection import SharedConnection
    silent = SharedConnection(silent_libvirtd, open_timeout=0.5)
    failed = []

    def migrate():
        try:
            migration.migrate(silent, WEB_UUID, 'qemu+tcp://10.77.0.2/system', {},
                              libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_LIVE)
        except HTTPError as err:
            failed.append(err)
    mover = threading.Thread(target=migrate, daemon=True)
    mover.start()
    mover.join(30)  # bounds a hang only; the open timeout is 0.5 s
    assert not mover.is_alive()
    assert (failed[0].status, failed[0].code) == (504, 'hypervisor_timeout')


# A host's sysinfo as libvirt formats dmidecode's SMBIOS tables (virSysinfoFormat).
SYSINFO = """<sysinfo type='smbios'>
  <bios><entry name='vendor'>SeaBIOS</entry></bios>
  <system>
    <entry name='manufacturer'>QEMU</entry>
    <entry name='product'>Standard PC (i440FX + PIIX, 1996)</entry>
    %s
  </system>
</sysinfo>"""


@pytest.mark.parametrize('entry, uuid', [
    ("<entry name='uuid'>4C4C4544-0042-3510-8052-B4C04F4E4A32</entry>",
     '4c4c4544-0042-3510-8052-b4c04f4e4a32'),
    ("<entry name='uuid'>00000000-0000-0000-0000-000000000000</entry>", None),  # not set
    ("<entry name='uuid'>FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF</entry>", None),
    ("<entry name='uuid'>Not Settable</entry>", None),  # dmidecode's words for none
    ('', None),
])
def test_a_hosts_sysinfo_names_it_by_its_smbios_system_uuid_if_it_has_a_real_one(entry, uuid):
    """libxl's capabilities carry no host UUID: its sysinfo's SMBIOS system UUID tells hosts
    apart instead, unless it identifies no machine."""
    assert migration.sysinfo_uuid(SYSINFO % entry) == uuid


def test_the_test_drivers_sysinfo_names_no_system_so_test_nodes_stay_apart(three):
    """The test driver answers one fixed sysinfo for every node: it has no system UUID, so
    each node is told apart by its URI (were it to name one, every test node would be one
    host, and this would fail)."""
    a, b = (three.app.hypervisors[name].connection.get() for name in ('a', 'b'))
    assert a.getSysinfo(0) == b.getSysinfo(0)
    assert migration.sysinfo_uuid(a.getSysinfo(0)) is None
    assert migration.host_of(a) != migration.host_of(b)


@pytest.mark.parametrize('bounds, bound', [({'bandwidth': 5}, 'bandwidth'),
                                           ({'downtime': 300}, 'downtime'),
                                           ({'bandwidth': None, 'downtime': 300}, 'downtime')])
def test_a_bound_the_sources_driver_lacks_is_501_before_anything_moves(three, bounds, bound):
    """The route refuses a driver that does not migrate first (the test driver); behind that,
    each bound asked for is probed by reading it (virDomainMigrateGetMaxSpeed,
    ...GetMaxDowntime): VIR_ERR_NO_SUPPORT, as the test driver (and libxl) answer, is 501."""
    from xend_rest.errors import HTTPError
    web = three.app.hypervisors['a'].connection.get().lookupByName('web')
    with pytest.raises(HTTPError) as refused:
        migration.check_bounds(web, 'a', **bounds)
    assert (refused.value.status, refused.value.code) == (501, 'not_supported')
    assert f'({bound}=)' in refused.value.message and 'connection a (TEST)' in refused.value.message
    migration.check_bounds(web, 'a', bandwidth=None, downtime=None)  # none asked: nothing probed
