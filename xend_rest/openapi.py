"""The API in OpenAPI 3: the vocabulary a route row's documentation is written in, and the
document built from the rows (each row carries its own words: see routes.py).
"""

from . import __version__, defaults
from .params import AFFECT_FLAGS, DOMAIN_XML_FLAGS

JSON = defaults.JSON


class Doc:
    """A route's OpenAPI words: a summary, {status: schema name, (media, schema) or None},
    its query parameters and the schema name of its body."""

    __slots__ = ('summary', 'responses', 'parameters', 'body')

    def __init__(self, summary, responses, parameters=(), body=None):
        self.summary, self.responses = summary, responses
        self.parameters, self.body = list(parameters), body


def query(name, description, schema, required=False):
    return {'name': name, 'in': 'query', 'required': required, 'description': description,
            'schema': schema}


def flag(table):
    """The `flag` parameter of a route, from its flag table in params (one list of the bits)."""
    names = ', '.join('%d %s' % (bit, name) for name, bit in table)
    return query('flag', 'An OR of: ' + names + '. Default 0.', {'type': 'integer', 'minimum': 0})


def lifecycle(summary, flag_parameter, extra=(), not_modified=True, timeout=False):
    """A domain action's words: 204 done (304 already so), 409 not in a state that allows it."""
    responses = {204: NO_BODY, 400: ERROR, 403: ERROR, 404: ERROR, 409: ERROR}
    if not_modified:
        responses[304] = NO_BODY
    if timeout:
        responses[408] = ERROR
    return Doc(summary, responses, [flag_parameter, *extra])


def upgrade(summary, console=False):
    """A console or screen route's words: 101 and a session, or a refusal decided before it."""
    parameters = [query('ticket', 'A console ticket (for browsers, which cannot send '
                        'Authorization); single-use.', STRING)]
    if console:
        parameters = [
            query('dev', 'The console or serial device, by alias (default: the first console).',
                  STRING),
            query('force', '1/True/true: take the console over from the session holding it.',
                  BOOLEAN),
            query('safe', '1/True/true: only a console libvirt can open safely.', BOOLEAN),
        ] + parameters
    return Doc(summary, {101: NO_BODY, 400: ERROR, 403: ERROR, 404: ERROR, 409: ERROR,
                         426: ERROR, 429: ERROR, 501: ERROR}, parameters)


PATH_PARAMETERS = {
    'connection': 'The hypervisor connection, by its configured name.',
    'ident': 'The domain: its running id, its UUID or its name.',
    'pool': 'The storage pool, by name.',
    'name': 'The image (volume) name within its pool.',
}
STRING = {'type': 'string'}
BOOLEAN = {'type': 'string', 'enum': ['1', 'True', 'true', '0', 'False', 'false']}
ALL = query('all', '1/True/true: every defined domain, not only the running ones.', BOOLEAN)
XML_FLAG = flag(DOMAIN_XML_FLAGS)
AFFECT_FLAG = flag(AFFECT_FLAGS)
NO_FLAG = query('flag', 'Only 0.', {'type': 'integer', 'enum': [0]})
SIZE = query('size', 'The new size (memory: KiB).', {'type': 'integer', 'minimum': 1}, True)
WAIT = query('wait', 'Answer only once done, waiting at most this many seconds (0-%d); 408 when '
             'that runs out.' % defaults.MAX_WAIT_SECONDS,
             {'type': 'number', 'minimum': 0, 'maximum': defaults.MAX_WAIT_SECONDS})
FORCE = query('force', '1/True/true: even while a defined domain uses the image.', BOOLEAN)
CAPACITY = query('capacity', 'A size: bytes, or a number with a unit (K, M, G, T; KiB...; KB...).',
                 {'type': 'string'}, True)
OCTETS = (defaults.OCTETS, {'type': 'string', 'format': 'binary'})
TEXT = ('text/plain', STRING)
ERROR = 'Error'
NO_BODY = None
STANDARD_ERRORS = {500: ERROR, 503: ERROR}  # every route may meet a bug or an absent libvirt

INT = {'type': 'integer'}
MAYBE_INT = {'type': 'integer', 'nullable': True}
MAYBE_STRING = {'type': 'string', 'nullable': True}


def _object(properties, required=None):
    return {'type': 'object', 'properties': properties,
            'required': sorted(properties) if required is None else required}


def _ref(name):
    return {'$ref': '#/components/schemas/' + name}


SCHEMAS = {
    'Error': _object({'message': STRING, 'code': STRING}),
    'Message': _object({'message': STRING}),
    'Domain': _object({'domain': {'type': 'object'}}),
    'DomainList': {'type': 'array', 'items': _ref('Domain')},
    'Device': {'type': 'object', 'minProperties': 1, 'maxProperties': 1},
    'Created': _object({'Uuid': STRING, 'Warnings': {'type': 'array', 'items': STRING}}),
    'WaitResult': _object({'State': {'type': 'string',
                                     'enum': ['running', 'shutoff', 'paused', 'undefined']}}),
    'Stats': _object({
        'Name': STRING, 'Uuid': STRING, 'Id': MAYBE_INT, 'State': STRING,
        'CpuTimeNs': MAYBE_INT, 'Vcpus': MAYBE_INT,
        'Memory': _object({'CurrentKiB': MAYBE_INT, 'MaximumKiB': MAYBE_INT}),
        'Block': {'type': 'array', 'items': _object({
            'Device': STRING, 'ReadRequests': MAYBE_INT, 'ReadBytes': MAYBE_INT,
            'WriteRequests': MAYBE_INT, 'WriteBytes': MAYBE_INT, 'Errors': MAYBE_INT})},
        'Network': {'type': 'array', 'items': _object({
            'Device': STRING, 'RxBytes': MAYBE_INT, 'RxPackets': MAYBE_INT,
            'RxErrors': MAYBE_INT, 'RxDrops': MAYBE_INT, 'TxBytes': MAYBE_INT,
            'TxPackets': MAYBE_INT, 'TxErrors': MAYBE_INT, 'TxDrops': MAYBE_INT})},
    }),
    'StatsList': {'type': 'array', 'items': _ref('Stats')},
    'Image': _object({
        'Name': STRING, 'Pool': STRING, 'Path': {'type': 'string', 'nullable': True},
        'Type': {'type': 'string', 'nullable': True}, 'Format': {'type': 'string', 'nullable': True},
        'Capacity': INT, 'Allocation': INT, 'UsedBy': {'type': 'array', 'items': STRING},
        'Uploading': {'type': 'boolean'}}),
    'ImageList': {'type': 'array', 'items': _ref('Image')},
    'Volume': _object({'volume': {'type': 'object'}}),
    'Pool': _object({
        'Name': STRING, 'Uuid': STRING, 'Type': STRING, 'Path': {'type': 'string', 'nullable': True},
        'State': STRING, 'Capacity': INT, 'Allocation': INT, 'Available': INT,
        'Persistent': {'type': 'boolean'}, 'Autostart': {'type': 'boolean'}}),
    'PoolList': {'type': 'array', 'items': _ref('Pool')},
    'StoragePool': _object({'pool': {'type': 'object'}}),
    'Octets': {'type': 'string', 'format': 'binary'},
    'Event': _object({
        'Id': INT, 'Time': STRING, 'Event': STRING, 'Detail': {'type': 'string', 'nullable': True},
        'Domain': _object({'Name': STRING, 'Uuid': STRING})}),
    'Ticket': _object({'Ticket': STRING, 'Expires': {'type': 'number'}, 'Path': STRING}),
    # The top-level libvirtd and hypervisor fields are the default connection's: null while down.
    'Version': _object({'Version': STRING, 'ApiVersion': STRING, 'LibvirtVersion': STRING,
                        'DaemonLibvirtVersion': MAYBE_STRING, 'Hypervisor': MAYBE_STRING,
                        'HypervisorVersion': MAYBE_STRING,
                        'Connections': {'type': 'object', 'additionalProperties': _object({
                            'Connected': {'type': 'boolean'}, 'DaemonLibvirtVersion': MAYBE_STRING,
                            'Hypervisor': MAYBE_STRING, 'HypervisorVersion': MAYBE_STRING})}}),
    # What the connection's last open learnt (null before the first): it may be down now.
    'Connection': _object({'Name': STRING, 'Uri': STRING, 'Connected': {'type': 'boolean'},
                           'Driver': MAYBE_STRING, 'Hostname': MAYBE_STRING,
                           'LibvirtVersion': MAYBE_STRING, 'HypervisorVersion': MAYBE_STRING,
                           'Error': MAYBE_STRING}),
    'ConnectionList': {'type': 'array', 'items': _ref('Connection')},
    'Info': _object({
        'Hostname': STRING, 'Driver': STRING, 'Uri': STRING, 'Cpus': INT, 'CpuModel': STRING,
        'CpuMhz': INT, 'NumaNodes': INT, 'Sockets': INT, 'Cores': INT, 'Threads': INT,
        'MemoryKiB': INT,
        'Domains': _object({'running': INT, 'paused': INT, 'shutoff': INT, 'other': INT}),
        'Supports': {'type': 'object', 'additionalProperties': {'type': 'boolean',
                                                                'nullable': True}},
    }),
}

REASONS = {101: 'Switching Protocols: the console or screen session begins', 200: 'OK',
           201: 'Created', 202: 'Accepted', 204: 'No Content', 304: 'Not Modified',
           400: 'Bad request', 403: 'Refused (dom0)', 404: 'No such domain or endpoint',
           406: 'Definition rejected by libvirt', 408: 'The wait ran out (see the docs)',
           409: 'Not in a state that allows it', 411: 'Content-Length required',
           413: 'Body too large', 416: 'Range not satisfiable',
           426: 'Upgrade required (WebSocket, or tcp for attach)',
           429: 'Too many console sessions (or tickets) at once',
           500: 'Server error', 501: 'Not supported by this hypervisor driver',
           503: 'libvirt is unreachable, or too many event streams are open'}


def document(routes, connections=('xen',)):
    """The OpenAPI 3 document of the API that `routes` serve on these hypervisor connections."""
    paths = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, connections)
    return {
        'openapi': '3.0.3',
        'info': {'title': 'xend-rest', 'version': __version__,
                 'description': 'Manage the virtual machines of a Xen host over HTTP, '
                                'through libvirt.'},
        'paths': paths,
        'components': {'schemas': SCHEMAS},
    }


def _operation(route, connections):
    doc = route.doc or Doc('(undocumented)', {})
    parameters = [_path_parameter(name, connections) for name in _path_parameters(route.path)]
    operation = {'operationId': route.handler.__name__, 'summary': doc.summary,
                 'parameters': parameters + doc.parameters,
                 'responses': {str(status): _response(status, spec) for status, spec
                               in sorted({**STANDARD_ERRORS, **doc.responses}.items())}}
    if doc.body:
        media = OCTETS[0] if doc.body == 'Octets' else JSON
        operation['requestBody'] = {'required': True,
                                    'content': {media: {'schema': _ref(doc.body)}}}
    return operation


def _path_parameter(name, connections):
    schema = {'type': 'string', 'enum': list(connections)} if name == 'connection' \
        else STRING
    return {'name': name, 'in': 'path', 'required': True,
            'description': PATH_PARAMETERS.get(name, ''), 'schema': schema}


def _path_parameters(path):
    return [part[1:-1] for part in path.split('/') if part.startswith('{')]


def _response(status, spec):
    response = {'description': REASONS.get(status, str(status))}
    if spec is None:
        return response
    media, schema = spec if isinstance(spec, tuple) else (JSON, _ref(spec))
    response['content'] = {media: {'schema': schema}}
    return response
