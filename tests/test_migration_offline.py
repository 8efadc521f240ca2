"""Offline migration (docs/api.md, Migrate a domain): a shut-off domain's definition moves as the
daemon's own move (defined on the destination, undefined on the source), on every driver, the
test driver's too; its refusals come before anything changes, and a failure on the source undoes
the destination's definition."""
import libvirt
import pytest

from conftest import DOMAINS, Client, node_xml
from xend_rest.api.app import make_app
from xend_rest.api.security import Guard
from xend_rest.errors import HTTPError
from xend_rest.hypervisor.moves import migration

VAULT = 'aaaaaaaa-0000-4000-8000-00000000000a'
# A shut-off domain with a graphics password: the secret moves with it.
VAULT_XML = f"""<domain type='xen'><name>vault</name><uuid>{VAULT}</uuid>
  <memory unit='KiB'>524288</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type>%s</os>
  <devices><disk type='file' device='disk'><source file='/var/lib/xen/images/vault.raw'/>
  <target dev='xvda' bus='xen'/></disk>
  <graphics type='vnc' port='-1' passwd='s3cret-pw'/></devices></domain>"""
NVRAM = ("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
         '<nvram>/var/lib/libvirt/nvram/vault_VARS.fd</nvram>')


@pytest.fixture
def hosts(tmp_path):
    """a: conftest's node; b: another host with dom0 and one guest, other."""
    (tmp_path / 'a.xml').write_text(node_xml())
    (tmp_path / 'b.xml').write_text(node_xml([DOMAINS[0], ('other', None, 'xen', '')]))
    app = make_app(connections={'a': f"test://{tmp_path / 'a.xml'}",
                                'b': f"test://{tmp_path / 'b.xml'}"})
    yield Client(app)
    app.close()


def conn(client, name):
    return client.app.hypervisors[name].connection.get()


def defined(client):
    """{host: {name: (state, persistent, autostart)}} of every domain on both hosts."""
    return {host: {dom.name(): (dom.state()[0], dom.isPersistent(), dom.autostart())
                   for dom in conn(client, host).listAllDomains()} for host in ('a', 'b')}


def migrate(client, name, query='to=b'):
    response = client.post(f'/libvirt/a/nodes/{name}/migrate', query=query)
    if response.status != 202:
        return response, None
    return response, client.get(response.headers['Location'], query='wait=20').json


def test_a_shut_off_domain_moves_to_the_destination_with_its_secrets_and_autostart(hosts):
    vault = conn(hosts, 'a').defineXML(VAULT_XML % '')
    vault.setAutostart(1)
    before = vault.XMLDesc(migration.OFFLINE_XML)
    response, done = migrate(hosts, 'vault', 'to=b&bandwidth=5&downtime=100')  # unused offline
    assert response.status == 202 and response.json['Kind'] == 'migrate'
    assert done['State'] == 'succeeded', done
    states = defined(hosts)
    assert 'vault' not in states['a']
    assert states['b']['vault'] == (libvirt.VIR_DOMAIN_SHUTOFF, 1, 1)
    arrived = conn(hosts, 'b').lookupByName('vault')
    assert arrived.UUIDString() == VAULT
    assert arrived.XMLDesc(migration.OFFLINE_XML) == before  # the password too
    assert "passwd='s3cret-pw'" in before
    assert 's3cret' not in str(done)  # never in an answer


def test_conftests_shut_off_domain_moves_and_the_others_stay(hosts):
    others = defined(hosts)['a']
    response, done = migrate(hosts, 'idle')
    assert done['State'] == 'succeeded', done
    states = defined(hosts)
    del others['idle']
    assert states['a'] == others
    assert states['b']['idle'] == (libvirt.VIR_DOMAIN_SHUTOFF, 1, 0)


def test_an_offline_migration_is_no_job_that_can_be_cancelled(hosts):
    response, done = migrate(hosts, 'idle')
    cancelled = hosts.post(response.headers['Location'].replace('/json', '/cancel'))
    assert cancelled.status == 409  # ended already (it is quick), or no job
    assert done['Progress'] is None


@pytest.mark.parametrize('clash', [
    "<domain type='xen'><name>vault</name><memory>524288</memory>"
    "<os><type>hvm</type></os></domain>",  # its name, another UUID
    f"<domain type='xen'><name>safe</name><uuid>{VAULT}</uuid><memory>524288</memory>"
    "<os><type>hvm</type></os></domain>",  # its UUID, another name
])
def test_a_destination_with_a_domain_of_that_name_or_uuid_is_409_before_anything(hosts, clash):
    conn(hosts, 'a').defineXML(VAULT_XML % '')
    conn(hosts, 'b').defineXML(clash)
    before = defined(hosts)
    response, _ = migrate(hosts, 'vault')
    assert response.status == 409 and response.json['code'] == 'already_exists'
    assert 'connection b' in response.json['message']
    assert defined(hosts) == before
    assert hosts.get('/libvirt/a/operations/json').json == []


def test_snapshots_are_409_before_anything(hosts):
    idle = conn(hosts, 'a').lookupByName('idle')
    idle.snapshotCreateXML('<domainsnapshot><name>before</name></domainsnapshot>')
    before = defined(hosts)
    response, _ = migrate(hosts, 'idle')
    assert response.status == 409 and response.json['code'] == 'invalid_state'
    assert 'snapshots' in response.json['message']
    assert defined(hosts) == before and idle.snapshotNum() == 1


def test_a_managed_save_image_is_409_before_anything(hosts):
    db = conn(hosts, 'a').lookupByName('db')
    db.managedSave()  # saved, and so shut off, with its memory in an image of host a's
    before = defined(hosts)
    response, _ = migrate(hosts, 'db')
    assert response.status == 409 and response.json['code'] == 'invalid_state'
    assert 'managed save image' in response.json['message']
    assert defined(hosts) == before and db.hasManagedSaveImage()


def test_a_domain_with_nvram_moves_and_its_file_stays_where_it_is(hosts):
    """The NVRAM file is storage (assumed shared): undefined on the source without removing it
    (QEMU is told VIR_DOMAIN_UNDEFINE_KEEP_NVRAM; the test driver takes no NVRAM flag)."""
    conn(hosts, 'a').defineXML(VAULT_XML % NVRAM)
    assert migration.undefine_flags(conn(hosts, 'a'), VAULT_XML % NVRAM) == 0
    response, done = migrate(hosts, 'vault')
    assert done['State'] == 'succeeded', done
    nvram = conn(hosts, 'b').lookupByName('vault').XMLDesc(0)
    assert '/var/lib/libvirt/nvram/vault_VARS.fd' in nvram


def test_a_source_whose_undefine_fails_after_the_checks_keeps_the_domain_and_b_has_none(hosts):
    """move_definition, as the operation runs it: a snapshot taken after the route's checks
    (as another client could) makes the source's undefine fail; the definition made on b is
    removed again, and libvirt's error is the operation's."""
    a, b = conn(hosts, 'a'), conn(hosts, 'b')
    idle = a.lookupByName('idle')
    xml = idle.XMLDesc(migration.OFFLINE_XML)
    idle.snapshotCreateXML('<domainsnapshot><name>late</name></domainsnapshot>')
    before = defined(hosts)
    with pytest.raises(libvirt.libvirtError) as failed:
        migration.move_definition(a, b, idle.UUIDString(), xml, True, 'connection b')
    assert failed.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
    assert defined(hosts) == before  # idle defined on a, never left on b


def test_a_domain_started_on_the_source_meanwhile_stays_there_and_b_has_none(hosts):
    a, b = conn(hosts, 'a'), conn(hosts, 'b')
    idle = a.lookupByName('idle')
    xml = idle.XMLDesc(migration.OFFLINE_XML)
    idle.create()  # as virsh start would, after the route's checks
    before = defined(hosts)
    with pytest.raises(HTTPError) as refused:
        migration.move_definition(a, b, idle.UUIDString(), xml, False, 'connection b')
    assert (refused.value.status, refused.value.code) == (409, 'invalid_state')
    assert defined(hosts) == before


def test_the_definition_is_judged_by_the_host_path_policy_of_the_destination(tmp_path):
    """idle's disk (/var/lib/xen/images/idle.raw) is outside the allowed paths: 403, as a
    Create there would be, and nothing moves."""
    (tmp_path / 'a.xml').write_text(node_xml())
    (tmp_path / 'b.xml').write_text(node_xml([DOMAINS[0]]))
    (tmp_path / 'images').mkdir()
    app = make_app(connections={'a': f"test://{tmp_path / 'a.xml'}",
                                'b': f"test://{tmp_path / 'b.xml'}"},
                   guard=Guard(allowed_paths=[str(tmp_path / 'images')]))
    client = Client(app)
    before = defined(client)
    response, _ = migrate(client, 'idle')
    assert response.status == 403 and response.json['code'] == 'path_not_allowed'
    assert 'idle.raw' in response.json['message']
    assert defined(client) == before
    app.close()


def test_a_live_migration_on_the_test_driver_stays_501(hosts):
    before = defined(hosts)
    response, _ = migrate(hosts, 'web')
    assert response.status == 501 and response.json['code'] == 'not_supported'
    assert defined(hosts) == before


def test_a_start_on_the_source_just_before_the_undefine_keeps_it_there(monkeypatch, tmp_path):
    """A start (virsh, autostart) landing between the move's last check and its undefine: the
    domain runs on the source, which libvirt turns transient on the undefine. The move gives it
    its definition and its autostart mark back, removes the destination's, and says 409 (it
    once 'succeeded', leaving it running here and defined there: two copies once started)."""
    (tmp_path / 'a.xml').write_text(node_xml())
    (tmp_path / 'b.xml').write_text(node_xml([DOMAINS[0]]))
    app = make_app(connections={'a': f"test://{tmp_path / 'a.xml'}", 'b': f"test://{tmp_path / 'b.xml'}"})
    client = Client(app)
    source = app.hypervisors['a'].connection.get()
    source.lookupByName('idle').setAutostart(1)
    undefine = libvirt.virDomain.undefineFlags

    def started_just_before(dom, flags=0):
        if dom.connect().getURI() == source.getURI() and not dom.isActive():
            dom.create()
        return undefine(dom, flags)
    monkeypatch.setattr(libvirt.virDomain, 'undefineFlags', started_just_before)
    response = client.post('/libvirt/a/nodes/idle/migrate', query='to=b')
    assert response.status == 202
    done = client.get(response.headers['Location'], query='wait=10').json
    assert (done['State'], done['Error']['code']) == ('failed', 'invalid_state'), done
    idle = source.lookupByName('idle')
    assert (idle.isActive(), idle.isPersistent(), idle.autostart()) == (1, 1, 1)
    assert 'idle' not in [dom.name() for dom in app.hypervisors['b'].connection.get().listAllDomains()]
    app.close()
