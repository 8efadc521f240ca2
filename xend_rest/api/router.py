"""Matching a request's method and path to a route row: segment by segment, never across a '/'."""
from urllib.parse import unquote_to_bytes

from xend_rest.errors import HTTPError, bad_request

# A parameter that takes the rest of the path up to the route's last segment: an image name
# with a '/' in it reaches its handler and gets its 400 there, rather than a 404.
REST_PARAMETERS = ('name',)


def path_segments(path, encoded):
    """A path's segments as text. An encoded path (the raw request target) is split first and
    each segment decoded after, so that '%2F' stays inside its segment; invalid UTF-8 is a 400."""
    parts = path.split('/')[1:] if path.startswith('/') else [path]
    try:
        if encoded:
            return [unquote_to_bytes(part).decode('utf-8') for part in parts]
        # PEP 3333 hands PATH_INFO over as latin-1; names may be UTF-8. A server that decoded it
        # already (characters latin-1 cannot hold) is taken at its word.
        return [part.encode('latin-1').decode('utf-8') for part in parts]
    except UnicodeEncodeError:
        return parts
    except UnicodeDecodeError:
        raise bad_request('the path is not valid UTF-8') from None


class _Pattern:
    """A route's path template, compiled: literal segments, and parameters between them."""

    def __init__(self, template):
        self.parts = template.split('/')[1:]
        self.rest = next((i for i, part in enumerate(self.parts)
                          if part[1:-1] in REST_PARAMETERS), None)

    def match(self, segments):
        """The path parameters, or None when the segments are not this route's."""
        parts = self.parts
        if self.rest is not None and len(segments) > len(parts):
            cut = len(segments) - len(parts)  # how many more segments the rest parameter takes
            segments = (segments[:self.rest] + ['/'.join(segments[self.rest:self.rest + cut + 1])]
                        + segments[self.rest + cut + 1:])
        if len(segments) != len(parts):
            return None
        params = {}
        for part, segment in zip(parts, segments):
            if part.startswith('{'):
                if not segment:
                    return None
                params[part[1:-1]] = segment
            elif part != segment:
                return None
        return params


class Router:
    """Finds the route for a method and path, or raises 404, or 405 with its Allow header."""

    def __init__(self, routes):
        self.routes = list(routes)
        self._compiled = [(route, _Pattern(route.path)) for route in self.routes]

    def find(self, method, segments):
        """(route, path parameters) for a path's segments (see path_segments)."""
        allowed = set()
        for route, pattern in self._compiled:
            params = pattern.match(segments)
            if params is None:
                continue
            if route.method == method or (method == 'HEAD' and route.method == 'GET'):
                return route, params
            allowed.add(route.method)
        path = '/' + '/'.join(segments)
        if allowed:
            if 'GET' in allowed:
                allowed.add('HEAD')
            raise HTTPError(405, f'method {method} is not allowed on {path}',
                            'method_not_allowed', [('Allow', ', '.join(sorted(allowed)))])
        raise HTTPError(404, f'no such endpoint: {path}', 'no_such_endpoint')
