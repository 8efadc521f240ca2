"""Log lines a client cannot forge: whatever a request brings into a line (its target, a name in
it, an exception's message about it, libvirt's words about it), each record keeps to its line
and carries no terminal control (docs/server.md, the access log)."""
import logging
import re
import socket

import pytest

from conftest import Client, serving
from xend_rest.app import make_app
from xend_rest.errors import HTTPError
from xend_rest.openapi import Doc
from xend_rest.routes import ADMIN, Route

# A domain "name" that, written as it is, would add a line saying alice destroyed web.
FORGED = ('2026-12-06 17:00:00,000 INFO xend_rest.access: POST /libvirt/xen/nodes/web/destroy '
          '204 0 1.00ms 192.0.2.7 token:alice')
IDENT = 'web%0A' + FORGED.replace(' ', '%20').replace('/', '%2F')


def broken(request, ident):
    """A handler with a bug that quotes the request: an unexpected exception (500)."""
    raise ValueError(f'no such thing: {ident}')


def failing(request, ident):
    """A 5xx whose message quotes a name, as libvirt's do."""
    raise HTTPError(500, f"no domain with matching name '{ident}'", 'libvirt_error')


ROUTES = [Route('GET', '/libvirt/{connection}/broken/{ident}', broken, ADMIN, Doc('', {})),
          Route('GET', '/libvirt/{connection}/failing/{ident}', failing, ADMIN, Doc('', {}))]


def assert_one_line_each(caplog):
    """Every record is one line of printable ASCII (a traceback: lines of code, indented), and
    no line of the log begins like a record of its own that nobody wrote."""
    for record in caplog.records:
        assert re.fullmatch(r'[\x20-\x7e]+', record.getMessage().split('\n')[0])
    lines = caplog.text.splitlines()
    assert not [line for line in lines if line.startswith('2026-12-06')], caplog.text
    assert not [line for line in lines if re.search(r'[^\x20-\x7e]', line)], caplog.text


@pytest.mark.parametrize('route', ['broken', 'failing'])
def test_an_error_line_cannot_forge_a_log_line(node_uri, caplog, route):
    app = make_app(uri=node_uri, routes=ROUTES)
    caplog.set_level(logging.INFO)
    with serving(app, on_refused=app.refused) as server:
        with socket.create_connection(server.addresses[0], timeout=10) as sock:
            sock.sendall(f'GET /libvirt/xen/{route}/{IDENT} HTTP/1.1\r\nHost: localhost\r\n'
                         'Connection: close\r\n\r\n'.encode())
            assert sock.recv(65536).startswith(b'HTTP/1.1 500 ')
    assert_one_line_each(caplog)
    app.close()


@pytest.mark.parametrize('route', ['broken', 'failing'])
def test_under_another_server_an_error_line_cannot_forge_one_either(node_uri, caplog, route):
    """Without RAW_URI (wsgiref), the app has only the decoded path: a newline in it, and an
    escape sequence, are written percent-encoded."""
    app = make_app(uri=node_uri, routes=ROUTES)
    caplog.set_level(logging.INFO)
    forged = FORGED.replace('/', '|')  # a decoded path: a '/' would end the segment
    answer = Client(app).request('GET', f'/libvirt/xen/{route}/web\n{forged}\x1b[2J')
    assert answer.status == 500
    assert_one_line_each(caplog)
    app.close()
