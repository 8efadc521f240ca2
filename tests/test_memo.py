"""The per-domain memo of what is derived from a domain's XML: never stale, one entry per domain."""
import pytest

from conftest import NODE_XML, WEB_UUID
from xend_rest.api.app import make_app
from xend_rest.hypervisor import convert
from xend_rest.hypervisor.memo import DomainMemo

NODES = '/libvirt/xen/nodes'


class Counted:
    """A derivation that counts its calls."""

    def __init__(self, derive=len):
        self.derive = derive
        self.calls = 0

    def __call__(self, xml):
        self.calls += 1
        return self.derive(xml)


def test_the_same_xml_is_derived_once():
    memo, derive = DomainMemo(), Counted()
    assert memo.get('u', '<a/>', derive) == memo.get('u', '<a/>', derive) == 4
    assert derive.calls == 1


def test_a_changed_xml_is_derived_again_and_replaces_the_entry():
    memo, derive = DomainMemo(), Counted()
    memo.get('u', '<a/>', derive)
    assert memo.get('u', '<ab/>', derive) == 5
    assert memo.get('u', '<a/>', derive) == 4  # back again: derived again, never the other's
    assert (derive.calls, len(memo)) == (3, 1)


def test_each_derivation_is_kept_apart():
    memo = DomainMemo()
    assert memo.get('u', '<a/>', len) == 4
    assert memo.get('u', '<a/>', str.upper) == '<A/>'


def test_a_complete_listing_drops_the_domains_that_are_gone():
    memo, derive = DomainMemo(), Counted()
    for uuid in 'abc':
        memo.get(uuid, '<x/>', derive)
    memo.listed({'a', 'c'}, complete=False)  # only the running ones: b may still be defined
    assert len(memo) == 3
    memo.listed({'a', 'c'}, complete=True)
    assert len(memo) == 2
    memo.get('a', '<x/>', derive), memo.get('c', '<x/>', derive)
    assert derive.calls == 3


def test_without_complete_listings_the_memo_stays_bounded():
    memo = DomainMemo(minimum=4)
    for index in range(20):
        memo.get(index, '<x/>', len)
        assert len(memo) <= 4
    assert 19 in memo._entries  # the newest stay


def test_a_long_listing_raises_the_bound():
    memo = DomainMemo(minimum=4)
    memo.expect(10)
    for index in range(10):
        memo.get(index, '<x/>', len)
    assert len(memo) == 10


# -- through the API ------------------------------------------------------------------------------

def test_list_follows_a_change_made_behind_our_back(api):
    def web():
        listed = api.get(NODES + '/json').json
        return next(item for item in listed if item['domain']['uuid'] == WEB_UUID)
    assert web()['domain']['currentMemory']['#text'] == '1048576'
    api.conn.lookupByName('web').setMemoryFlags(524288, 1)  # live, not through the API
    assert web()['domain']['currentMemory']['#text'] == '524288'


def test_a_list_and_an_inspect_share_the_entry(api, monkeypatch):
    counted = Counted(convert.xml_to_json)
    monkeypatch.setattr(convert, 'xml_to_json', counted)
    listed = api.get(NODES + '/json').json
    assert api.get(NODES + '/web/json').status == 200
    assert api.get(NODES + '/json').json == listed
    assert counted.calls == len(listed)


def test_a_deleted_domain_leaves_the_memo_at_the_next_complete_list(api):
    every = len(api.get(NODES + '/json', 'all=1').json)
    memo = api.app.hypervisor.memo
    assert len(memo) == every
    assert api.post(NODES + '/idle/delete').status == 204
    api.get(NODES + '/json')  # running ones only: it cannot tell
    assert len(memo) == every
    api.get(NODES + '/json', 'all=1')
    assert len(memo) == every - 1


def test_a_list_of_more_domains_than_the_old_memo_held_derives_each_once(tmp_path, monkeypatch):
    count = 1100  # past the 1,024 entries of the memo this one replaced
    domain = ("<domain type='xen'><name>vm%d</name><memory>1024</memory>"
              "<os><type>xen</type></os></domain>")
    path = tmp_path / 'node.xml'
    path.write_text(NODE_XML % ''.join(domain % index for index in range(count)))
    counted = Counted(convert.xml_to_json)
    monkeypatch.setattr(convert, 'xml_to_json', counted)
    app = make_app(uri='test://%s' % path)
    from conftest import Client
    client = Client(app)
    try:
        first = client.get(NODES + '/json', 'all=1').json
        assert client.get(NODES + '/json', 'all=1').json == first
    finally:
        app.close()
    assert len(first) == count
    assert counted.calls == count


def test_stats_follow_a_domain_whose_devices_changed(api):
    assert [disk['Device'] for disk in api.get(NODES + '/db/stats').json['Block']] == ['xvda']
    conn = api.conn
    db = conn.lookupByName('db')
    xml = db.XMLDesc(0)
    db.destroy()
    conn.defineXML(xml.replace('</devices>', "<disk type='file' device='disk'>"
                               "<source file='/var/lib/xen/images/db2.raw'/>"
                               "<target dev='xvdb' bus='xen'/></disk></devices>"))
    conn.lookupByName('db').create()
    assert [disk['Device'] for disk in api.get(NODES + '/db/stats').json['Block']] == \
        ['xvda', 'xvdb']


@pytest.mark.parametrize('path', [NODES + '/stats', '/metrics'])
def test_stats_and_metrics_read_each_running_domains_devices_once(api, path, monkeypatch):
    from xend_rest.hypervisor import stats
    counted = Counted(stats.device_names)
    monkeypatch.setattr(stats, 'device_names', counted)
    first = api.get(path).body
    calls = counted.calls
    assert calls > 0
    api.get(path)
    assert first and counted.calls == calls
