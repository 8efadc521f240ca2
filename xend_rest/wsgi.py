"""For WSGI servers that want a module-level `application` (uWSGI, mod_wsgi).

The libvirt URI comes from $XEND_REST_URI (default xen:///system). Nothing connects to libvirt
until the first request.
"""
from xend_rest.api.app import make_app

application = make_app()
