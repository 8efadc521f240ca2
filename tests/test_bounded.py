"""A libvirt call the request stops waiting for (Stop and Restart on libxl, tests/xen): its
value or its error when it returns in time; StillRunning, and the call going on, when not."""
import threading

import libvirt
import pytest

from xend_rest.hypervisor.bounded import StillRunning, call_within


def test_a_call_that_returns_in_time_answers_its_value(node_uri):
    conn = libvirt.open(node_uri)
    assert call_within(conn.getHostname, 5, 'hostname') == conn.getHostname()
    conn.close()


def test_a_call_that_fails_in_time_raises_its_own_error(node_uri):
    conn = libvirt.open(node_uri)
    with pytest.raises(libvirt.libvirtError) as raised:
        call_within(lambda: conn.lookupByName('no-such-domain'), 5, 'lookup')
    assert raised.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
    conn.close()


def test_a_call_past_its_bound_is_still_running_and_finishes_in_the_background():
    release, finished = threading.Event(), threading.Event()

    def blocked():
        release.wait(10)
        finished.set()

    with pytest.raises(StillRunning):
        call_within(blocked, 0.2, 'a blocked call')
    assert not finished.is_set()
    release.set()
    assert finished.wait(5)
