"""The route table, as data: (method, path pattern, handler) rows, compiled once by Router."""
import re

from .errors import HTTPError
from .handlers import domains, events, host, images

PARAMETER = re.compile(r'\(\?P<(\w+)>[^)]*\)')
NODES = '/libvirt/xen/nodes'
DOMAIN = NODES + '/(?P<ident>[^/]+)'
IMAGES = '/libvirt/xen/images'
POOL_IMAGES = IMAGES + '/(?P<pool>[^/]+)'
# An image name takes the rest of the path (newlines too), so that "a/b" reaches the handler
# and gets its 400 rather than a 404.
IMAGE = POOL_IMAGES + r'/(?P<name>[\s\S]+)'
POOLS = '/libvirt/xen/pools'

ROUTES = [
    ('GET', NODES + '/json', domains.list_domains),
    ('POST', NODES + '/create', domains.create_domain),
    ('GET', DOMAIN + '/json', domains.inspect_domain),
    ('POST', DOMAIN + '/start', domains.start_domain),
    ('POST', DOMAIN + '/stop', domains.stop_domain),
    ('POST', DOMAIN + '/destroy', domains.destroy_domain),
    ('POST', DOMAIN + '/restart', domains.restart_domain),
    ('POST', DOMAIN + '/delete', domains.delete_domain),
    ('POST', DOMAIN + '/suspend', domains.suspend_domain),
    ('POST', DOMAIN + '/resume', domains.resume_domain),
    ('POST', DOMAIN + '/devices/attach', domains.attach_device),
    ('POST', DOMAIN + '/devices/detach', domains.detach_device),
    ('POST', DOMAIN + '/devices/update', domains.update_device),
    ('POST', DOMAIN + '/memory/resize', domains.resize_memory),
    ('POST', DOMAIN + '/vcpu/resize', domains.resize_vcpu),
    ('POST', DOMAIN + '/wait', events.wait_domain),
    ('GET', DOMAIN + '/stats', host.domain_stats),
    ('GET', NODES + '/stats', host.all_stats),
    ('GET', '/libvirt/xen/events', events.stream_events),
    ('GET', '/_ping', host.ping),
    ('GET', '/version', host.version),
    ('GET', '/info', host.info),
    ('GET', '/metrics', host.metrics),
    ('GET', '/openapi.json', host.openapi_document),
    ('GET', IMAGES + '/json', images.list_images),
    ('POST', POOL_IMAGES + '/create', images.create_image),
    ('GET', IMAGE + '/json', images.inspect_image),
    ('POST', IMAGE + '/clone', images.clone_image),
    ('POST', IMAGE + '/resize', images.resize_image),
    ('POST', IMAGE + '/wipe', images.wipe_image),
    ('POST', IMAGE + '/delete', images.delete_image),
    ('PUT', IMAGE + '/upload', images.upload_image),
    ('GET', IMAGE + '/download', images.download_image),
    ('GET', POOLS + '/json', images.list_pools),
    ('GET', POOLS + '/(?P<pool>[^/]+)/json', images.inspect_pool),
]


def path_template(pattern):
    """A route's pattern as an OpenAPI path: '/nodes/(?P<ident>[^/]+)/json' -> '/nodes/{ident}/json'."""
    return PARAMETER.sub(r'{\1}', pattern)


class Router:
    """Finds the handler for a method and path, or raises 404, or 405 with its Allow header."""

    def __init__(self, routes):
        self.table = list(routes)
        self.routes = [(method, re.compile(pattern + r'\Z'), handler,
                        '%s %s' % (method, path_template(pattern)))
                       for method, pattern, handler in routes]

    def find(self, method, path):
        """(route name, handler, path parameters); the name ('GET /nodes/{ident}/json') labels metrics."""
        allowed = set()
        for route_method, pattern, handler, name in self.routes:
            found = pattern.match(path)
            if found is None:
                continue
            if route_method == method or (method == 'HEAD' and route_method == 'GET'):
                return name, handler, found.groupdict()
            allowed.add(route_method)
        if allowed:
            if 'GET' in allowed:
                allowed.add('HEAD')
            raise HTTPError(405, 'method %s is not allowed on %s' % (method, path),
                            'method_not_allowed', [('Allow', ', '.join(sorted(allowed)))])
        raise HTTPError(404, 'no such endpoint: %s' % path, 'no_such_endpoint')
