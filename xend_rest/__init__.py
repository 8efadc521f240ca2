"""xend-rest: manage the virtual machines of a Xen host over HTTP, through libvirt.

Four layers, their imports pointing one way (docs/layout.md): server/ (HTTP/1.1), api/ (the WSGI
application), hypervisor/ (everything that talks to libvirt), consoles/ (upgraded sessions)."""
__version__ = '0.1.0'


def make_app(*args, **kwargs):
    """The WSGI application; see xend_rest.api.app.make_app."""
    from xend_rest.api.app import make_app as _make_app
    return _make_app(*args, **kwargs)
