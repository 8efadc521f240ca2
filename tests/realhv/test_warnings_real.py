"""Create's Warnings on a real QEMU libvirtd: what its driver drops, checked in what it stored."""
import pathlib

import libvirt
import pytest

from conftest import Client
from xend_rest.api.app import make_app
from xend_rest.hypervisor import convert

NODES = '/libvirt/qemu/nodes'
DEFINITIONS = pathlib.Path(__file__).parent.parent / 'definitions'
STORED = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE


@pytest.fixture(scope='module')
def api(libvirtd):
    app = make_app(connections={'qemu': libvirtd.uri})
    yield Client(app)
    app.close()


@pytest.mark.parametrize('second_has_source', [True, False])
def test_the_generated_path_of_one_of_two_unix_channels_is_named(api, guest_name,
                                                                 second_has_source):
    body = convert.xml_to_dict((DEFINITIONS / 'qemu-channels.xml').read_text())
    body['domain']['name'] = guest_name('channels')
    posted = body['domain']['devices']['channel']
    if not second_has_source:
        del posted[1]['source']
    response = api.post(NODES + '/create', body)
    assert response.status == 201, response.json
    # libvirt writes no <source> for a unix channel without a path: the whole element is gone
    assert response.json['Warnings'] == ['domain.devices.channel[0].source was dropped by libvirt']
    stored = api.conn.lookupByUUIDString(response.json['Uuid']).XMLDesc(STORED)
    channels = convert.xml_to_dict(stored)['domain']['devices']['channel']
    assert [channel['target']['@name'] for channel in channels] == [
        'org.qemu.guest_agent.0', 'org.example.metrics.0']
    assert [channel.get('source') for channel in channels] == [None, posted[1].get('source')]
