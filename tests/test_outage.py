"""A libvirt that cannot be reached is a 503 with Retry-After; the next request after it returns works."""
import shutil

import libvirt
import pytest

from conftest import Client, node_xml
from xend_rest.api.app import make_app
from xend_rest.api.routes import Route
from xend_rest.hypervisor.libvirt_connection import SharedConnection

NODES = '/libvirt/xen/nodes'


def test_unreachable_libvirt_is_503_then_recovers(tmp_path):
    node = tmp_path / 'node.xml'
    client = Client(make_app(uri='test://%s' % node))
    response = client.get(NODES + '/json')
    assert response.status == 503
    assert response.headers['Retry-After'].isdigit()
    assert response.json['code'] == 'hypervisor_unavailable'
    node.write_text(node_xml())  # "libvirt is back"
    response = client.get(NODES + '/json')
    assert response.status == 200
    assert len(response.json) == 4
    assert client.app.hypervisor.connection.connects == 1


def test_no_libvirtd_behind_a_remote_uri_is_503(tmp_path):
    client = Client(make_app(uri='qemu+unix:///system?socket=%s/none.sock' % tmp_path))
    for path in ('/json', '/web/json'):
        response = client.get(NODES + path)
        assert response.status == 503
        assert response.headers['Retry-After']
        assert 'none.sock' in response.json['message']
    assert client.post(NODES + '/web/start').status == 503


def test_libvirt_prints_nothing_to_stderr(tmp_path, api, capfd):
    Client(make_app(uri='test://%s/missing.xml' % tmp_path)).get(NODES + '/json')
    api.get(NODES + '/nosuch/json')
    api.post(NODES + '/web/devices/attach', {'disk': {'target': {'@dev': 'xvdz'}}})
    api.post(NODES + '/create', {'domain': {'name': 'x'}})
    assert capfd.readouterr().err == ''


def test_a_failing_handler_is_a_json_500_with_the_traceback_only_in_the_log(node_uri, caplog):
    def broken(request):
        raise RuntimeError('secret detail')

    client = Client(make_app(uri=node_uri, routes=[Route('GET', '/boom', broken)]))
    response = client.get('/boom')
    assert response.status == 500
    assert response.json == {'message': 'internal server error', 'code': 'internal_error'}
    assert 'secret' not in response.body.decode()
    assert 'RuntimeError: secret detail' in caplog.text


def test_an_answer_that_cannot_be_sent_is_a_json_500_too(node_uri, caplog):
    def unserialisable(request):
        return 200, {'when': object()}

    app = make_app(uri=node_uri, routes=[Route('GET', '/odd', unserialisable)])
    response = Client(app).get('/odd')
    assert response.status == 500
    assert response.json == {'message': 'internal server error', 'code': 'internal_error'}
    assert 'cannot send the answer' in caplog.text
    assert [(route, status) for route, status, *_ in app.metrics.samples()] == [('GET /odd', 500)]


def test_apps_do_not_share_state(tmp_path):
    first, second = tmp_path / 'a.xml', tmp_path / 'b.xml'
    first.write_text(node_xml())
    shutil.copy(first, second)
    a, b = Client(make_app(uri='test://%s' % first)), Client(make_app(uri='test://%s' % second))
    assert a.post(NODES + '/web/destroy').status == 204
    assert b.get(NODES + '/web/json').status == 200
    assert a.app.hypervisor.connection is not b.app.hypervisor.connection


@pytest.mark.parametrize('method', ['PUT', 'DELETE', 'PATCH'])
def test_other_methods_are_405(api, method):
    response = api.request(method, NODES + '/web/start')
    assert response.status == 405
    assert response.headers['Allow'] == 'POST'


def test_a_connection_broken_during_create_is_dropped_and_reopened(api):
    from test_create import TEST0
    api.conn.close()  # the link breaks behind the daemon's back
    response = api.post(NODES + '/create', TEST0)
    assert response.status == 503
    assert response.json['code'] == 'outcome_unknown'
    assert api.get(NODES + '/json').status == 200  # the next request reconnects
    assert api.app.hypervisor.connection.connects == 2


class InactiveXenDriver(SharedConnection):
    """libvirtd with its Xen driver inactive (it started before xenstored): every open fails as
    libvirtd 9.0 on Debian 12's dom0 answered, VIR_ERR_INTERNAL_ERROR from VIR_FROM_LIBXL (the
    Xen tier records it: tests/xen/test_systemd_xen.py)."""

    def _connect(self):
        err = libvirt.libvirtError('internal error: libxenlight state driver is not active')
        err.err = (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_LIBXL,
                   'internal error: libxenlight state driver is not active', 2, '', None, None,
                   0, 0)
        raise err


@pytest.mark.parametrize('uri, advice', [('xen:///system', True), ('xen:///', True),
                                         ('xen:///session', False)])
def test_an_inactive_xen_driver_is_a_503_that_says_what_to_do_and_one_log_line(uri, advice,
                                                                             caplog):
    """Decided from libvirt's error code and domain and the URI, never from its message; a
    path other than /system is libxl's other failure at open, which the advice would not fit."""
    client = Client(make_app(connection=InactiveXenDriver(uri)))
    for _ in range(3):
        response = client.get(NODES + '/json')
        assert response.status == 503 and response.headers['Retry-After'].isdigit()
        message = response.json['message']
        assert 'libxenlight state driver is not active' in message  # libvirt's own words too
        assert ('systemctl restart libvirtd' in message) is advice
        assert ('After=xen.service' in message) is advice
    lines = [r for r in caplog.records if 'state driver is not active' in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == 'WARNING', lines
    assert 'cannot connect' in lines[0].getMessage()
