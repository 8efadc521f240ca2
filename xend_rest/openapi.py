"""The API in OpenAPI 3: the paths come from the route table, the words from one row per route.

A new route needs one row in DESCRIPTIONS (the test suite fails for a route without one, and for
a row without a route).
"""

from . import __version__
from .params import (AFFECT_FLAGS, DESTROY_FLAGS, DOMAIN_XML_FLAGS, REBOOT_FLAGS, SHUTDOWN_FLAGS,
                     START_FLAGS, UNDEFINE_FLAGS, VOL_CREATE_FLAGS, VOL_DELETE_FLAGS,
                     VOL_RESIZE_FLAGS)
from .routes import path_template

JSON = 'application/json'


def _query(name, description, schema, required=False):
    return {'name': name, 'in': 'query', 'required': required, 'description': description,
            'schema': schema}


def _flag(table):
    """The `flag` parameter of a route, from its flag table in params (one list of the bits)."""
    names = ', '.join('%d %s' % (bit, name) for name, bit in table)
    return _query('flag', 'An OR of: ' + names + '. Default 0.', {'type': 'integer', 'minimum': 0})


PATH_PARAMETERS = {
    'ident': 'The domain: its running id, its UUID or its name.',
    'pool': 'The storage pool, by name.',
    'name': 'The image (volume) name within its pool.',
}
ALL = _query('all', '1/True/true: every defined domain, not only the running ones.',
             {'type': 'string', 'enum': ['1', 'True', 'true', '0', 'False', 'false']})
XML_FLAG = _flag(DOMAIN_XML_FLAGS)
AFFECT_FLAG = _flag(AFFECT_FLAGS)
NO_FLAG = _query('flag', 'Only 0.', {'type': 'integer', 'enum': [0]})
SIZE = _query('size', 'The new size (memory: KiB).', {'type': 'integer', 'minimum': 1}, True)
SECONDS = {'type': 'number', 'minimum': 0, 'maximum': 600}
WAIT = _query('wait', 'Answer only once done, waiting at most this many seconds (0-600); '
              '408 when that runs out.', SECONDS)

ERROR = 'Error'
TEXT = ('text/plain', {'type': 'string'})
NO_BODY = None
STANDARD_ERRORS = {500: ERROR, 503: ERROR}  # every route may meet a bug or an absent libvirt


def _op(summary, responses, parameters=(), body=None):
    return {'summary': summary, 'responses': responses, 'parameters': list(parameters),
            'body': body}


def _lifecycle(summary, flag, extra=(), not_modified=True):
    responses = {204: NO_BODY, 400: ERROR, 404: ERROR, 409: ERROR}
    if not_modified:
        responses[304] = NO_BODY
    return _op(summary, responses, [flag, *extra])


NODES = '/libvirt/xen/nodes'
DOMAIN = NODES + '/{ident}'
IMAGES = '/libvirt/xen/images'
STRING_SCHEMA = {'type': 'string'}
IMAGE = IMAGES + '/{pool}/{name}'
FORCE = _query('force', '1/True/true: even while a defined domain uses the image.',
               {'type': 'string', 'enum': ['1', 'True', 'true', '0', 'False', 'false']})
CAPACITY = _query('capacity', 'A size: bytes, or a number with a unit (K, M, G, T; KiB...; KB...).',
                  {'type': 'string'}, True)
OCTETS = ('application/octet-stream', {'type': 'string', 'format': 'binary'})

# (method, path) -> the route's description; the route table says which exist.
DESCRIPTIONS = {
    ('GET', NODES + '/json'): _op('List domains (dom0 excepted)', {200: 'DomainList', 400: ERROR},
                                  [ALL, XML_FLAG]),
    ('POST', NODES + '/create'): _op(
        'Define (or redefine) a domain', {201: 'Created', 400: ERROR, 406: ERROR, 409: ERROR,
                                          413: ERROR}, body='Domain'),
    ('GET', DOMAIN + '/json'): _op('Inspect a domain', {200: 'Domain', 403: ERROR, 404: ERROR},
                                   [XML_FLAG]),
    ('POST', DOMAIN + '/start'): _lifecycle('Start a domain', _flag(START_FLAGS)),
    ('POST', DOMAIN + '/stop'): dict(
        _lifecycle('Shut a domain down', _flag(SHUTDOWN_FLAGS), [WAIT]),
        responses={204: NO_BODY, 304: NO_BODY, 400: ERROR, 404: ERROR, 408: ERROR, 409: ERROR}),
    ('POST', DOMAIN + '/destroy'): _lifecycle('Power a domain off', _flag(DESTROY_FLAGS)),
    ('POST', DOMAIN + '/restart'): dict(
        _lifecycle('Reboot a domain', _flag(REBOOT_FLAGS), [WAIT], not_modified=False),
        responses={204: NO_BODY, 400: ERROR, 404: ERROR, 408: ERROR, 409: ERROR}),
    ('POST', DOMAIN + '/delete'): _lifecycle('Delete a domain\'s definition', _flag(UNDEFINE_FLAGS),
                                             not_modified=False),
    ('POST', DOMAIN + '/suspend'): _lifecycle('Pause a domain', NO_FLAG),
    ('POST', DOMAIN + '/resume'): _lifecycle('Resume a paused domain', NO_FLAG),
    ('POST', DOMAIN + '/devices/attach'): _op(
        'Attach a device', {201: 'Device', 400: ERROR, 404: ERROR, 409: ERROR, 501: ERROR},
        [AFFECT_FLAG], body='Device'),
    ('POST', DOMAIN + '/devices/detach'): _op(
        'Detach a device', {202: 'Message', 204: NO_BODY, 400: ERROR, 404: ERROR, 501: ERROR},
        [AFFECT_FLAG], body='Device'),
    ('POST', DOMAIN + '/devices/update'): _op(
        'Change a device in place', {200: 'Device', 400: ERROR, 404: ERROR, 501: ERROR},
        [AFFECT_FLAG], body='Device'),
    ('POST', DOMAIN + '/memory/resize'): _op(
        'Resize a domain\'s memory', {204: NO_BODY, 400: ERROR, 404: ERROR, 501: ERROR},
        [SIZE, _query('type', 'target (default) or max.', {'type': 'string',
                                                          'enum': ['target', 'max']}),
         AFFECT_FLAG]),
    ('POST', DOMAIN + '/vcpu/resize'): _op(
        'Change a domain\'s virtual CPUs', {204: NO_BODY, 400: ERROR, 404: ERROR, 501: ERROR},
        [SIZE, _query('type', 'current (default) or max.', {'type': 'string',
                                                           'enum': ['current', 'max']}),
         AFFECT_FLAG]),
    ('POST', DOMAIN + '/wait'): _op(
        'Wait until a domain reaches a state', {200: 'WaitResult', 400: ERROR, 404: ERROR,
                                                408: ERROR},
        [_query('condition', 'The state to wait for.', {
            'type': 'string', 'enum': ['running', 'shutoff', 'paused', 'undefined']}, True),
         _query('timeout', 'Seconds to wait at most (0-600, default 60).', SECONDS)]),
    ('GET', DOMAIN + '/stats'): _op('A domain\'s counters', {200: 'Stats', 403: ERROR, 404: ERROR}),
    ('GET', NODES + '/stats'): _op('Every domain\'s counters', {200: 'StatsList', 400: ERROR},
                                   [ALL]),
    ('GET', '/libvirt/xen/events'): _op(
        'Domain events as they happen', {200: ('application/x-ndjson', {'$ref': '#/components/'
                                                                        'schemas/Event'}),
                                         400: ERROR},
        [_query('since', 'Replay the kept events after this id first.', {'type': 'integer'}),
         _query('domain', 'Only events of these domains (names or UUIDs, comma-separated).',
                {'type': 'string'}),
         _query('event', 'Only these events (comma-separated names).', {'type': 'string'}),
         _query('limit', 'End the stream after this many events.', {'type': 'integer',
                                                                     'minimum': 1}),
         _query('timeout', 'End the stream after this many seconds.', {'type': 'number',
                                                                        'minimum': 0})]),
    ('GET', '/_ping'): _op('Is the daemon alive? (touches no hypervisor)', {200: TEXT}),
    ('GET', '/version'): _op('Versions of the daemon, libvirt and the hypervisor',
                             {200: 'Version'}),
    ('GET', '/info'): _op('The host, its domains, and what its driver supports', {200: 'Info'}),
    ('GET', '/metrics'): _op('Metrics in Prometheus\' text format', {200: (
        'text/plain; version=0.0.4', {'type': 'string'})}),
    ('GET', '/openapi.json'): _op('This document', {200: (JSON, {'type': 'object'})}),
    ('GET', IMAGES + '/json'): _op('List images (every pool, or one)', {200: 'ImageList',
                                                                     404: ERROR},
                                   [_query('pool', 'Only this pool.', STRING_SCHEMA)]),
    ('POST', IMAGES + '/{pool}/create'): _op(
        'Create an empty image', {201: 'Image', 400: ERROR, 404: ERROR, 409: ERROR},
        [_query('name', 'The new image\'s name.', STRING_SCHEMA, True), CAPACITY,
         _query('format', 'raw (default) or qcow2.', {'type': 'string', 'enum': ['raw', 'qcow2']}),
         _query('allocation', 'Space to allocate now (default 0: sparse).', STRING_SCHEMA),
         _flag(VOL_CREATE_FLAGS)]),
    ('GET', IMAGE + '/json'): _op('Inspect an image', {200: 'Volume', 400: ERROR, 404: ERROR}),
    ('POST', IMAGE + '/clone'): _op(
        'Clone an image', {201: 'Image', 400: ERROR, 404: ERROR, 409: ERROR},
        [_query('name', 'The clone\'s name.', STRING_SCHEMA, True),
         _query('pool', 'The clone\'s pool (default: the same).', STRING_SCHEMA),
         _query('format', 'raw or qcow2 (default: the source\'s).',
                {'type': 'string', 'enum': ['raw', 'qcow2']})]),
    ('POST', IMAGE + '/resize'): _op(
        'Resize an image (shrinking needs flag=4)', {204: NO_BODY, 400: ERROR, 404: ERROR,
                                                     409: ERROR, 501: ERROR},
        [CAPACITY, FORCE, _flag(VOL_RESIZE_FLAGS)]),
    ('POST', IMAGE + '/wipe'): _op(
        'Wipe an image\'s content', {204: NO_BODY, 400: ERROR, 404: ERROR, 409: ERROR, 501: ERROR},
        [_query('algorithm', 'zero (default), or one of libvirt\'s wipe patterns.', STRING_SCHEMA),
         FORCE]),
    ('POST', IMAGE + '/delete'): _op(
        'Delete an image', {204: NO_BODY, 400: ERROR, 404: ERROR, 409: ERROR},
        [FORCE, _flag(VOL_DELETE_FLAGS)]),
    ('PUT', IMAGE + '/upload'): _op(
        'Upload a new image\'s content', {201: 'Image', 400: ERROR, 404: ERROR, 408: ERROR,
                                           409: ERROR, 411: ERROR, 413: ERROR, 501: ERROR},
        [_query('capacity', 'The image\'s size (default: the body\'s length).', STRING_SCHEMA)],
        body='Octets'),
    ('GET', IMAGE + '/download'): _op(
        'Download an image (a single Range is honoured)', {200: OCTETS, 206: OCTETS, 400: ERROR,
                                                           404: ERROR, 409: ERROR, 416: ERROR,
                                                           501: ERROR}),
    ('GET', '/libvirt/xen/pools/json'): _op('List storage pools', {200: 'PoolList'}),
    ('GET', '/libvirt/xen/pools/{pool}/json'): _op('Inspect a storage pool',
                                                   {200: 'StoragePool', 400: ERROR, 404: ERROR}),
}

INT = {'type': 'integer'}
MAYBE_INT = {'type': 'integer', 'nullable': True}
STRING = {'type': 'string'}


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
    'Version': _object({'Version': STRING, 'ApiVersion': STRING, 'LibvirtVersion': STRING,
                        'DaemonLibvirtVersion': STRING, 'Hypervisor': STRING,
                        'HypervisorVersion': STRING}),
    'Info': _object({
        'Hostname': STRING, 'Driver': STRING, 'Uri': STRING, 'Cpus': INT, 'CpuModel': STRING,
        'CpuMhz': INT, 'NumaNodes': INT, 'Sockets': INT, 'Cores': INT, 'Threads': INT,
        'MemoryKiB': INT,
        'Domains': _object({'running': INT, 'paused': INT, 'shutoff': INT, 'other': INT}),
        'Supports': {'type': 'object', 'additionalProperties': {'type': 'boolean',
                                                                'nullable': True}},
    }),
}

REASONS = {200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content', 304: 'Not Modified',
           400: 'Bad request', 403: 'Refused (dom0)', 404: 'No such domain or endpoint',
           406: 'Definition rejected by libvirt', 408: 'The wait ran out (see the docs)',
           409: 'Not in a state that allows it', 411: 'Content-Length required',
           413: 'Body too large', 416: 'Range not satisfiable',
           500: 'Server error', 501: 'Not supported by this hypervisor driver',
           503: 'libvirt is unreachable, or too many event streams are open'}


def undocumented(routes):
    """(method, path) of the routes that have no row in DESCRIPTIONS."""
    return sorted({(method, path_template(pattern)) for method, pattern, _handler in routes}
                  - set(DESCRIPTIONS))


def document(routes):
    """The OpenAPI 3 document of the API that `routes` serve."""
    paths = {}
    for method, pattern, handler in routes:
        path = path_template(pattern)
        row = DESCRIPTIONS.get((method, path)) or _op('(undocumented)', {})
        paths.setdefault(path, {})[method.lower()] = _operation(handler.__name__, path, row)
    return {
        'openapi': '3.0.3',
        'info': {'title': 'xend-rest', 'version': __version__,
                 'description': 'Manage the virtual machines of a Xen host over HTTP, '
                                'through libvirt.'},
        'paths': paths,
        'components': {'schemas': SCHEMAS},
    }


def _operation(operation_id, path, row):
    parameters = [{'name': name, 'in': 'path', 'required': True,
                   'description': PATH_PARAMETERS.get(name, ''), 'schema': STRING}
                  for name in _path_parameters(path)] + row['parameters']
    operation = {'operationId': operation_id, 'summary': row['summary'],
                 'parameters': parameters,
                 'responses': {str(status): _response(status, spec) for status, spec
                               in sorted({**STANDARD_ERRORS, **row['responses']}.items())}}
    if row['body']:
        media = OCTETS[0] if row['body'] == 'Octets' else JSON
        operation['requestBody'] = {'required': True,
                                    'content': {media: {'schema': _ref(row['body'])}}}
    return operation


def _path_parameters(path):
    return [part[1:-1] for part in path.split('/') if part.startswith('{')]


def _response(status, spec):
    response = {'description': REASONS.get(status, str(status))}
    if spec is None:
        return response
    media, schema = spec if isinstance(spec, tuple) else (JSON, _ref(spec))
    response['content'] = {media: {'schema': schema}}
    return response
