"""The API in OpenAPI 3: the vocabulary a route row's documentation is written in, and the
document built from the rows (each row carries its own words: see routes.py).
"""

from xend_rest import __version__, defaults
from . import jsonbody
from .params import (AFFECT_FLAGS, BOOLEANS, DOMAIN_XML_FLAGS, MAX_WHOLE, NAME_MAX, NO_FLAGS,
                     SIZE_PATTERN, flag_values)

JSON = defaults.JSON


class Doc:
    """A route's OpenAPI words: a summary, {status: schema name, (media, schema) or None} for the
    statuses only it answers (see ALWAYS for the rest), its query parameters, the schema name of
    its body, and its links: {name: (handler, {parameter: runtime expression})} from its first
    2xx answer to the routes that answer takes the client to."""

    __slots__ = ('summary', 'responses', 'parameters', 'body', 'links', 'tickets')

    def __init__(self, summary, responses, parameters=(), body=None, links=None, tickets=False):
        self.summary, self.responses = summary, responses
        self.parameters, self.body = list(parameters), body
        self.links = links or {}
        self.tickets = tickets  # a console ticket (?ticket=) is a credential here


def query(name, description, schema, required=False):
    return {'name': name, 'in': 'query', 'required': required, 'description': description,
            'schema': schema}


def flag(table):
    """The `flag` parameter of a route: each valid OR of the bits of its table in params."""
    names = ', '.join(f'{bit} {name}' for name, bit in table) or 'nothing: only 0'
    return query('flag', 'An OR of: ' + names + '. Default 0.',
                 {'type': 'integer', 'enum': flag_values(table)})


def lifecycle(summary, flag_parameter, extra=(), not_modified=True, asks_guest=False):
    """A domain action's words: 204 done (304 already so), 409 not in a state that allows it,
    501 a flag the driver does not implement; an action that asks the guest (shutdown, reboot)
    can also be 202 (libvirt has yet to return) and, with wait, 408."""
    responses = {204: NO_BODY, 409: ERROR, 501: ERROR}
    if not_modified:
        responses[304] = NO_BODY
    if asks_guest:  # and takes `wait`: a watcher, like /wait
        responses.update({202: 'OperationAccepted', **WATCHER_ANSWERS})
    return Doc(summary, responses, [flag_parameter, *extra])


def upgrade(summary, console=False, screen=False):
    """A console or screen route's words: 101 and a session, or a refusal decided before it (a
    screen's: also 502, its VNC server cannot be reached)."""
    parameters = []  # the ticket is a credential: see SECURITY_SCHEMES
    if console:
        parameters = [
            query('dev', 'The console or serial device, by alias (default: the first console).',
                  STRING),
            query('force', '1/True/true: take the console over from the session holding it.',
                  BOOLEAN),
            query('safe', '1/True/true: only a console libvirt can open safely.', BOOLEAN),
        ] + parameters
    responses = {101: NO_BODY, 400: ERROR, 403: ERROR, 404: ERROR, 409: ERROR, 426: ERROR,
                 429: ERROR, 501: ERROR}
    if screen:
        responses[502] = ERROR
    return Doc(summary, responses, parameters, tickets=True)


PATH_PARAMETERS = {
    'connection': 'The hypervisor connection, by its configured name.',
    'ident': 'The domain: its running id, its UUID or its name.',
    'pool': 'The storage pool, by name.',
    'name': 'The image (volume) name within its pool.',
    'operation': 'The operation, by its Id.',
    'network': 'The network, by name.',
}
STRING = {'type': 'string'}
# A pool or image name as handlers/images.check_name enforces it: no '/', '\\' or control
# character, no leading '.', and at most NAME_MAX bytes of UTF-8 (JSON Schema counts characters:
# a name of multi-byte characters can be refused below 255 of them).
NAME = {'type': 'string', 'minLength': 1, 'maxLength': NAME_MAX,
        'pattern': r'^[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]*$'}
IDENT = {'type': 'string', 'minLength': 1}
BOOLEAN = {'type': 'string', 'enum': sorted(BOOLEANS)}
WHOLE = {'type': 'integer', 'minimum': 0, 'maximum': MAX_WHOLE}
ALL = query('all', '1/True/true: every defined domain, not only the running ones.', BOOLEAN)
XML_FLAG = flag(DOMAIN_XML_FLAGS)
AFFECT_FLAG = flag(AFFECT_FLAGS)
NO_FLAG = flag(NO_FLAGS)
WAIT = query('wait', 'Answer only once done, waiting at most this many seconds '
             f'(0-{defaults.MAX_WAIT_SECONDS}); 408 when that runs out.',
             {'type': 'number', 'minimum': 0, 'maximum': defaults.MAX_WAIT_SECONDS})
FORCE = query('force', '1/True/true: even while a defined domain uses the image.', BOOLEAN)
SIZE_TEXT = ('A size: bytes, or a number with a unit (K, M, G, T, P, E and KiB... are powers of '
             '1024; KB... of 1000; B or bytes), at most 2^63-1 bytes.')
SIZE_SCHEMA = {'type': 'string', 'pattern': SIZE_PATTERN}
CAPACITY = query('capacity', SIZE_TEXT, SIZE_SCHEMA, True)
OCTETS = (defaults.OCTETS, {'type': 'string', 'format': 'binary'})
TEXT = ('text/plain', STRING)
ERROR = 'Error'
NO_BODY = None
# What a request that waits for an event may answer besides: the wait ran out (408), its
# caller holds its share of waits and streams (429), the client hung up meanwhile (499).
WATCHER_ANSWERS = {408: ERROR, 429: ERROR, 499: ERROR}
# What every route may answer: a query string or path that is not UTF-8 (400), credentials that
# are missing (401, where the daemon wants them) or may not do it, a Host or Origin it refuses
# (403), a body of another type than the route takes (415), a bug or a host failure (500), a
# busy server or an absent libvirt (503).
ALWAYS = {400: ERROR, 401: ERROR, 403: ERROR, 415: ERROR, 500: ERROR, 503: ERROR}
# Where a route names something in its path, it may not be there; where it acts on a hypervisor
# connection, libvirt may not answer in time; where it reads a body, the body may be missing its
# length, too large, or stop coming.
NAMED = {404: ERROR}
ON_CONNECTION = {504: ERROR}
WITH_BODY = {408: ERROR, 411: ERROR, 413: ERROR}

INT = {'type': 'integer'}
MAYBE_INT = {'type': ['integer', 'null']}
MAYBE_STRING = {'type': ['string', 'null']}

# A JSON document as convert.dict_to_xml takes it: element names are XML names (not starting
# with "xml"; a prefixed one needs its xmlns declared, which a schema cannot say, so none is
# described; of XML's own attributes, only those libvirt reads under no local name of its own),
# "@attribute" and "#text" hold a string XML can carry or a number, an element holds null, such
# a value, an object or a list of them (not of lists).
ELEMENT_NAME = r'^(?![Xx][Mm][Ll])[A-Za-z_][A-Za-z0-9_.-]*$'
ATTRIBUTE_NAME = r'^@(?:(?![Xx][Mm][Ll])[A-Za-z_][A-Za-z0-9_.-]*|xml:(?:lang|space))$'
MAX_NUMBER = jsonbody.MAX_NUMBER
XML_TEXT = {'type': 'string', 'pattern': '^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\ufffe\\uffff]*$'}


# A network's state (docs/api.md, Networks).
NETWORK_STATE = {'State': {'type': 'string', 'enum': ['active', 'inactive']},
                 'Autostart': {'type': 'boolean'}, 'Persistent': {'type': 'boolean'},
                 'Bridge': MAYBE_STRING, 'UsedBy': {'type': 'array', 'items': STRING}}
# Whether an image's content is all there (docs/api.md, Upload).
UPLOAD_STATE = {'Uploading': {'type': 'boolean'}, 'Incomplete': {'type': 'boolean'}}


def _object(properties, required=None):
    return {'type': 'object', 'properties': properties,
            'required': sorted(properties) if required is None else required}


def _ref(name):
    return {'$ref': '#/components/schemas/' + name}


SCHEMAS = {
    'Error': _object({'message': STRING, 'code': STRING}),
    'Message': _object({'message': STRING}),
    'XmlScalar': {'anyOf': [XML_TEXT, {'type': 'number', 'minimum': -MAX_NUMBER,
                                       'maximum': MAX_NUMBER}]},
    'XmlObject': {'type': 'object', 'properties': {'#text': _ref('XmlScalar')},
                  'patternProperties': {ATTRIBUTE_NAME: _ref('XmlScalar'),
                                        ELEMENT_NAME: _ref('XmlElement')},
                  'additionalProperties': False},
    'XmlItem': {'anyOf': [{'type': 'null'}, _ref('XmlScalar'), _ref('XmlObject')]},
    'XmlElement': {'anyOf': [_ref('XmlItem'), {'type': 'array', 'items': _ref('XmlItem')}]},
    # A definition as posted: the one root key "domain". (libvirt judges the rest: 406.)
    'DomainDefinition': {'type': 'object', 'properties': {'domain': _ref('XmlItem')},
                         'required': ['domain'], 'additionalProperties': False},
    # One device as posted: exactly one key, its type ("disk", "interface"...).
    'DeviceDefinition': {'type': 'object', 'minProperties': 1, 'maxProperties': 1,
                         'propertyNames': {'pattern': ELEMENT_NAME},
                         'additionalProperties': _ref('XmlItem')},
    # As libvirt stored them (names may carry namespace prefixes).
    'Domain': _object({'domain': {'type': 'object'}}),
    'DomainList': {'type': 'array', 'items': _ref('Domain')},
    'Device': {'type': 'object', 'minProperties': 1, 'maxProperties': 1},
    'Created': _object({'Uuid': STRING, 'Warnings': {'type': 'array', 'items': STRING}}),
    'WaitResult': _object({'State': {'type': 'string',
                                     'enum': ['running', 'shutoff', 'paused', 'undefined']}}),
    # One interface of a running domain and its addresses (docs/api.md, Addresses).
    'Interface': _object({
        'Name': MAYBE_STRING, 'Mac': MAYBE_STRING, 'Network': MAYBE_STRING,
        'Bridge': MAYBE_STRING, 'Addresses': {'type': 'array', 'items': _object({
            'Address': STRING, 'Prefix': MAYBE_INT,
            'Family': {'type': 'string', 'enum': ['ipv4', 'ipv6']},
            'Sources': {'type': 'array', 'minItems': 1, 'items': {
                'type': 'string', 'enum': ['lease', 'agent', 'arp', 'xenstore', 'neighbour']}}})}}),
    'InterfaceList': {'type': 'array', 'items': _ref('Interface')},
    'Stats': _object({
        'Name': STRING, 'Uuid': STRING, 'Id': MAYBE_INT, 'State': STRING,
        'Autostart': {'type': ['boolean', 'null']}, 'CpuTimeNs': MAYBE_INT, 'Vcpus': MAYBE_INT,
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
        'Name': STRING, 'Pool': STRING, 'Path': MAYBE_STRING, 'Type': MAYBE_STRING,
        'Format': MAYBE_STRING, 'Capacity': INT, 'Allocation': INT,
        'UsedBy': {'type': 'array', 'items': STRING}, **UPLOAD_STATE}),
    'ImageList': {'type': 'array', 'items': _ref('Image')},
    'Volume': _object({'volume': {'type': 'object'}, **UPLOAD_STATE}),
    'Pool': _object({
        'Name': STRING, 'Uuid': STRING, 'Type': STRING, 'Path': MAYBE_STRING,
        'State': STRING, 'Capacity': INT, 'Allocation': INT, 'Available': INT,
        'Persistent': {'type': 'boolean'}, 'Autostart': {'type': 'boolean'}}),
    'PoolList': {'type': 'array', 'items': _ref('Pool')},
    'StoragePool': _object({'pool': {'type': 'object'}}),
    'Octets': {'type': 'string', 'format': 'binary', 'minLength': 1},  # empty: use create
    # A network's state as List and Inspect give it; Create takes Inspect's answer back and
    # ignores these keys (api/handlers/networks.py STATE_KEYS).
    'NetworkSummary': _object({'Name': STRING, 'Uuid': STRING, 'Forward': MAYBE_STRING,
                               **NETWORK_STATE}),
    'NetworkList': {'type': 'array', 'items': _ref('NetworkSummary')},
    'Network': _object({'network': {'type': 'object'}, **NETWORK_STATE}),
    'NetworkDefinition': {'type': 'object', 'properties': {
        'network': _ref('XmlItem'), **NETWORK_STATE},
        'required': ['network'], 'additionalProperties': False},
    'Lease': _object({'Mac': STRING, 'Address': STRING, 'Prefix': MAYBE_INT,
                      'Family': {'type': 'string', 'enum': ['ipv4', 'ipv6', 'unknown']},
                      'Hostname': MAYBE_STRING, 'ClientId': MAYBE_STRING, 'Iaid': MAYBE_STRING,
                      'Interface': MAYBE_STRING, 'Expires': MAYBE_STRING}),
    'LeaseList': {'type': 'array', 'items': _ref('Lease')},
    'Bridge': _object({'Name': STRING, 'Active': {'type': 'boolean'}, 'Mac': MAYBE_STRING,
                       'Interfaces': {'type': 'array', 'items': STRING},
                       'Network': MAYBE_STRING}),
    'BridgeList': {'type': 'array', 'items': _ref('Bridge')},
    # A domain's event names its Domain and has no Type; another kind's has its Type (type=).
    'Event': _object({
        'Id': INT, 'Time': STRING, 'Event': STRING, 'Detail': MAYBE_STRING, 'Type': STRING,
        'Domain': _object({'Name': STRING, 'Uuid': STRING}),
        'Network': _object({'Name': STRING, 'Uuid': STRING})},
        required=['Detail', 'Event', 'Id', 'Time']),
    # A line of the stream: an event, or a notice (gap, reconnected, overflow, closed).
    'Notice': _object({'Notice': STRING, 'Message': STRING, 'LastId': MAYBE_INT}),
    'StreamLine': {'anyOf': [_ref('Event'), _ref('Notice')]},
    # A long action (docs/api.md, Operations); Progress as virDomainGetJobStats reports it.
    'Operation': _object({
        'Id': STRING, 'Kind': STRING, 'Target': _object({'Name': STRING, 'Uuid': MAYBE_STRING}),
        'State': {'type': 'string', 'enum': ['running', 'succeeded', 'failed', 'cancelled']},
        'Created': STRING, 'Updated': STRING, 'Caller': MAYBE_STRING,
        'Progress': {'anyOf': [{'type': 'null'}, _object({
            'DataTotal': MAYBE_INT, 'DataProcessed': MAYBE_INT, 'DataRemaining': MAYBE_INT,
            'TimeElapsedMs': MAYBE_INT})]},
        'Error': {'anyOf': [{'type': 'null'}, {'$ref': '#/components/schemas/Error'}]},
        # an evacuation's: each guest's outcome
        'Guests': {'type': 'array', 'items': _object({
            'Name': STRING, 'Uuid': STRING, 'To': MAYBE_STRING, 'Operation': MAYBE_STRING,
            'State': STRING, 'Error': {'anyOf': [{'type': 'null'}, _ref('Error')]}})}},
        required=['Caller', 'Created', 'Error', 'Id', 'Kind', 'Progress', 'State', 'Target',
                  'Updated']),
    'Maintenance': _object({'Maintenance': {'type': 'boolean'}, 'Since': MAYBE_STRING,
                            'Caller': MAYBE_STRING}),
    'OperationList': {'type': 'array', 'items': _ref('Operation')},
    # Stop and Restart past their bound: the operation, and the message of before operations.
    'OperationAccepted': {'allOf': [_ref('Operation'), _object({'message': STRING})]},
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
                           'Error': MAYBE_STRING, 'Maintenance': {'type': 'boolean'}}),
    'ConnectionList': {'type': 'array', 'items': _ref('Connection')},
    'Info': _object({
        'Hostname': STRING, 'Driver': STRING, 'Uri': STRING, 'Cpus': INT, 'CpuModel': STRING,
        'CpuMhz': INT, 'NumaNodes': INT, 'Sockets': INT, 'Cores': INT, 'Threads': INT,
        'MemoryKiB': INT,
        'Domains': _object({'running': INT, 'paused': INT, 'shutoff': INT, 'other': INT}),
        'Supports': {'type': 'object', 'additionalProperties': {'type': ['boolean', 'null']}},
    }),
}

REASONS = {
    101: 'Switching Protocols: the console or screen session begins', 200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content',
    206: 'Partial content: the one Range asked for', 304: 'Already so: nothing was done',
    400: 'Bad request: a malformed parameter, name, body or query string',
    401: 'Credentials required (where the daemon has tokens or client certificates)',
    403: 'Refused: dom0, or a role, connection, path, Host or Origin the request may not use',
    404: 'No such connection, domain, image, pool, network or device',
    406: 'Definition rejected by libvirt (its message says why)',
    408: 'A wait ran out, or the client stopped sending the body',
    409: "Not in a state that allows it (a screen: its VNC server is not listening), or it "
         'exists already',
    411: 'Content-Length required', 413: "Body too large (or larger than the image's capacity)",
    415: 'A body of another media type than the route takes (JSON where it takes none)',
    416: 'Range not satisfiable', 426: 'Upgrade required (WebSocket, or tcp for attach)',
    429: 'Too many console sessions (or tickets) at once, or the caller holds its share of '
         'sessions, or of event streams and waits',
    499: 'The client hung up while it waited: for the access log (a client that shut only its '
         'sending side reads it)', 500: 'Server error: a bug, or a failure of the host',
    501: 'Not supported by this hypervisor driver (the function, or a flag)',
    502: "The domain's VNC server cannot be reached (one that is not listening is a 409)",
    503: 'libvirt is unreachable, the server is busy, or too many event streams are open',
    504: 'libvirt did not answer in time', 507: 'Not enough free space in the pool',
}
# Credentials, where the daemon asks for them (tokens-file; on a loopback or unix listener without
# one, none are needed: hence the empty requirement). A TLS client certificate works as well.
SECURITY_SCHEMES = {
    'bearer': {'type': 'http', 'scheme': 'bearer',
               'description': 'A token of the tokens file (Authorization: Bearer TOKEN).'},
    'ticket': {'type': 'apiKey', 'in': 'query', 'name': 'ticket',
               'description': 'A single-use console ticket (POST .../console/ticket), for '
                              'browsers, which cannot send Authorization on a WebSocket.'},
}
SECURITY = [{}, {'bearer': []}]
DESCRIPTION = (
    'Manage the virtual machines of a Xen host over HTTP, through libvirt.\n\n'
    'A method a path does not have is answered 405 with an Allow header naming those it has '
    '(HEAD wherever GET is). A body on a route that takes none is ignored if it is JSON, and 415 '
    'otherwise.')


def document(routes, connections=('xen',)):
    """The OpenAPI 3.1 document of the API that `routes` serve on these hypervisor connections."""
    paths = {}
    for route in routes:
        operations = paths.setdefault(route.path, {})
        operations[route.method.lower()] = _operation(route, connections)
        if route.method == 'GET':
            operations['head'] = _head(operations['get'])
    return {
        'openapi': '3.1.0',
        'info': {'title': 'xend-rest', 'version': __version__, 'description': DESCRIPTION},
        'paths': paths,
        'security': SECURITY,
        'components': {
            'securitySchemes': SECURITY_SCHEMES,
            'schemas': SCHEMAS,
            'responses': {'MethodNotAllowed': {
                'description': 'Method not allowed: the Allow header names the methods the path '
                               'has', 'headers': {'Allow': {'schema': STRING}},
                'content': {JSON: {'schema': _ref(ERROR)}}}}},
    }


def _operation(route, connections):
    doc = route.doc or Doc('(undocumented)', {})
    names = _path_parameters(route.path)
    parameters = [_path_parameter(name, connections) for name in names]
    statuses = {**ALWAYS, **(NAMED if names else {}),
                **(ON_CONNECTION if route.on_connection else {}),
                **(WITH_BODY if route.body else {}), **doc.responses}
    responses = {str(status): _response(status, spec) for status, spec in sorted(statuses.items())}
    if doc.links:
        first = min(status for status in statuses if 200 <= status < 300)
        responses[str(first)]['links'] = {
            name: {'operationId': handler.__name__, 'parameters': values}
            for name, (handler, values) in doc.links.items()}
    operation = {'operationId': route.handler.__name__, 'summary': doc.summary,
                 'parameters': parameters + doc.parameters, 'responses': responses}
    if doc.tickets:
        operation['security'] = SECURITY + [{'ticket': []}]
    if doc.body:
        media = OCTETS[0] if doc.body == 'Octets' else JSON
        operation['requestBody'] = {'required': True,
                                    'content': {media: {'schema': _ref(doc.body)}}}
    return operation


def _head(get):
    """HEAD answers what GET does, without a body."""
    responses = {status: {'description': response['description']}
                 for status, response in get['responses'].items()}
    return dict(get, operationId=get['operationId'] + '_head', responses=responses,
                summary=get['summary'] + ' (headers only)')


def _path_parameter(name, connections):
    schema = {'type': 'string', 'enum': list(connections)} if name == 'connection' \
        else NAME if name in ('pool', 'name') else IDENT
    return {'name': name, 'in': 'path', 'required': True,
            'description': PATH_PARAMETERS.get(name, ''), 'schema': schema}


def _path_parameters(path):
    return [part[1:-1] for part in path.split('/') if part.startswith('{')]


def _response(status, spec):
    response = {'description': REASONS.get(status, str(status))}
    if spec is None:
        return response
    if isinstance(spec, dict):  # {media type: schema}: the answer comes in either
        response['content'] = {media: {'schema': schema} for media, schema in spec.items()}
        return response
    media, schema = spec if isinstance(spec, tuple) else (JSON, _ref(spec))
    response['content'] = {media: {'schema': schema}}
    return response
