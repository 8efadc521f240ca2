"""libvirt XML <-> JSON, in the xmltodict shape, the same both ways.

An element becomes a dict: attributes as "@name", text as "#text", children by tag; an element
with only text becomes that string, an empty one None; a repeated child becomes a list.
"""
import json
import re
import xml.etree.ElementTree as ElementTree

import xmltodict

from .errors import bad_request

# Names we accept as JSON keys: a conservative, ASCII-only subset of XML names (no colons other
# than a single prefix separator, which libvirt's own metadata uses). Not every Unicode \w is an
# XML name character, and libvirt's schema is all ASCII.
XML_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_.-]*(:[A-Za-z_][A-Za-z0-9_.-]*)?\Z')
# Names starting with "xml" belong to XML itself; these are the ones a definition may use.
XML_RESERVED = re.compile('xml', re.IGNORECASE)
XML_PREFIXES = frozenset(['xml'])  # the one prefix bound without a declaration
XML_ATTRIBUTES = re.compile(r'xmlns(:.+)?|xml:(lang|space|base|id)\Z')
# XML's own attributes whose local names libvirt reads nowhere (xml:id would be read as id).
XML_OWN = ('xml:lang', 'xml:space')
# Characters XML 1.0 cannot carry at all, even escaped (lone surrogates cannot even be encoded).
XML_INVALID_CHARS = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')


class JSONText(str):
    """JSON already serialised, which the app sends as it is."""


def xml_to_json(xml):
    """The JSON text of xml_to_dict(xml), keys sorted.

    Parsing plus serialising is most of what an Inspect or a List costs, and a domain's XML rarely
    changes between two polls: the handlers keep the result per domain (memo.DomainMemo).
    """
    return JSONText(json.dumps(xml_to_dict(xml), sort_keys=True))


def json_list(texts):
    """A JSON list of already serialised items."""
    return JSONText('[' + ', '.join(texts) + ']')


def xml_to_dict(xml):
    """Parse libvirt XML into the xmltodict shape.

    ElementTree is several times faster than xmltodict.parse and gives the same shape for the
    namespace-free XML libvirt writes; documents that declare namespaces (metadata, qemu:
    passthrough) go through xmltodict, which keeps prefixes as written.
    """
    if '<!DOCTYPE' in xml:  # libvirt never writes one; a DTD could declare entities
        raise ValueError('refusing XML with a document type declaration')
    if 'xmlns' in xml:
        return xmltodict.parse(xml, disable_entities=True)
    root = ElementTree.fromstring(xml)
    return {root.tag: _element(root)}


def _element(element):
    node = {'@' + name: value for name, value in element.attrib.items()}
    text = element.text or ''
    for child in element:
        value = _element(child)
        if child.tail:
            text += child.tail
        previous = node.get(child.tag, _MISSING)
        if previous is _MISSING:
            node[child.tag] = value
        elif type(previous) is list:
            previous.append(value)
        else:
            node[child.tag] = [previous, value]
    text = text.strip()
    if text:
        if not node:
            return text
        node['#text'] = text
    return node or None


_MISSING = object()


def dict_to_xml(doc, root, extensions=True):
    """Turn a JSON document {root: {...}} back into XML, refusing anything XML cannot express
    and any name libvirt would read otherwise than we do (`extensions`: the root may hold a
    hypervisor's namespaced elements, as <domain> does)."""
    if not isinstance(doc, dict) or list(doc) != [root]:
        raise bad_request(f'the body must be a JSON object with the single key "{root}"')
    if not _is_element_name(root):
        raise bad_request(f'{root}: not a valid XML element name')
    if isinstance(doc[root], list):
        raise bad_request(f'{root}: must be one object, not a list')
    _check_prefix(root, _declared(doc[root], XML_PREFIXES), root)
    _check(doc[root], root, XML_PREFIXES)
    if _namespaced(root, doc[root], ''):
        raise bad_request(f'{root}: libvirt reads <{root}> in no namespace')
    _check_names(doc[root], root, '', extensions)
    return xmltodict.unparse(doc, full_document=False)


def device_to_xml(doc):
    """A single device {"disk": {...}} as XML."""
    if not isinstance(doc, dict) or len(doc) != 1:
        raise bad_request('the body must be a JSON object with one key, the device type, '
                          'e.g. {"disk": {...}}')
    return dict_to_xml(doc, next(iter(doc)), extensions=False)


def _check(value, path, inherited):
    """Validate one JSON value standing for the element at `path`; `inherited`: prefixes in scope."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, list):
                raise bad_request(f'{path}[{index}]: a list cannot hold a list')
            _check(item, f'{path}[{index}]', inherited)
    elif isinstance(value, dict):
        prefixes = _declared(value, inherited)
        for key, child in value.items():
            where = f'{path}.{key}'
            if key == '#text':
                _check_scalar(child, where)
            elif key.startswith('@'):
                name = key[1:]
                if not XML_NAME.match(name) or (XML_RESERVED.match(name) and
                                                not XML_ATTRIBUTES.match(name)):
                    raise bad_request(f'{where}: not a valid XML attribute name')
                if name.startswith('xmlns:'):
                    _check_declaration(name, child, where)
                elif name != 'xmlns':
                    _check_prefix(name, prefixes, where)
                _check_scalar(child, where)
            elif not _is_element_name(key):
                raise bad_request(f'{where}: not a valid XML element name')
            else:
                for item in child if isinstance(child, list) else [child]:
                    _check_prefix(key, _declared(item, prefixes), where)
                _check(child, where, prefixes)
    elif value is not None:
        _check_scalar(value, path)


def _is_element_name(name):
    return bool(XML_NAME.match(name)) and not XML_RESERVED.match(name)


def _declared(element, prefixes):
    """The namespace prefixes in scope inside an element: its parent's and its own xmlns:p."""
    if not isinstance(element, dict):
        return prefixes
    own = {key[len('@xmlns:'):] for key in element if key.startswith('@xmlns:')}
    return prefixes | own if own else prefixes


def _check_prefix(name, prefixes, where):
    """A prefixed name (app:foo) needs its xmlns:app in scope, or no XML parser accepts it."""
    prefix, colon, _ = name.partition(':')
    if colon and prefix not in prefixes:
        raise bad_request(f'{where}: namespace prefix "{prefix}" is not declared '
                          f'(add "@xmlns:{prefix}")')


def _check_names(element, path, default, extensions):
    """400 where libvirt would read a name otherwise than as written: it reads an attribute by
    its local name whatever its prefix (p:file is file) and passes over an element in a
    namespace (tried on the test driver: a p:source is no disk's source). So an element of
    libvirt's takes no prefixed attribute, and namespaced children only where libvirt looks for
    a hypervisor's (`extensions`); <metadata> there is never read, so anything goes inside."""
    if isinstance(element, list):
        for index, item in enumerate(element):
            _check_names(item, f'{path}[{index}]', default, extensions)
        return
    if not isinstance(element, dict):
        return
    default = element.get('@xmlns', default)
    for key, child in element.items():
        where = f'{path}.{key}'
        if key.startswith('@'):
            name = key[1:]
            if ':' in name and not name.startswith('xmlns:') and name not in XML_OWN:
                raise bad_request(f'{where}: libvirt reads an attribute by its local name, '
                                  f'whatever its namespace: write "@{name.partition(":")[2]}"')
        elif key != '#text' and not (extensions and key == 'metadata'):
            for item in child if isinstance(child, list) else [child]:
                if not _namespaced(key, item, default):
                    _check_names(item, where, default, False)
                elif not extensions:
                    raise bad_request(f'{where}: libvirt passes over an element in a namespace '
                                      'here; only a hypervisor\'s own elements at the top of '
                                      'the definition, and <metadata>, may have one')


def _namespaced(key, element, default):
    """Whether an element is in a namespace: a prefix, or a default xmlns in scope."""
    return ':' in key or bool(element.get('@xmlns', default) if isinstance(element, dict)
                              else default)


def _check_declaration(name, uri, where):
    if name in ('xmlns:xml', 'xmlns:xmlns') or uri in ('', None):
        raise bad_request(f'{where}: a namespace declaration needs its own prefix and a URI')


def _check_scalar(value, path):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad_request(f'{path}: expected a string or a number')
    if isinstance(value, str) and XML_INVALID_CHARS.search(value):
        raise bad_request(f'{path}: contains a character XML cannot carry')


# What names one item of a repeated element (paths inside the item): a posted item is compared
# with the stored item that is the same thing, not merely a similar one. Two items are the same
# when they agree on every key both have and share at least one; a key only one side has (an
# address libvirt assigned, a user alias) neither joins nor separates them. Chosen from libvirt's
# formatdomain: what libvirt itself looks a device up by (target dev, MAC, channel name, serial
# port, controller type+index) or what must be unique per element (cachetune vcpus, memnode
# cellid, timer name). An interface's target dev is not one: drivers generate it (vnet0, testnet0).
IDENTITY = {
    'disk': ('target.@dev',),
    'interface': ('mac.@address',),
    'channel': ('target.@name',),
    'serial': ('target.@port',),
    'parallel': ('target.@port',),
    'console': ('target.@type', 'target.@port'),
    'controller': ('@type', '@index'),
    'filesystem': ('target.@dir',),
    'graphics': ('@type',),
    'input': ('@type', '@bus'),
    'hostdev': ('source.address', 'source.vendor.@id', 'source.product.@id'),
    'cachetune': ('@vcpus',),
    'memorytune': ('@vcpus',),
    'cache': ('@id', '@level', '@type'),
    'vcpupin': ('@vcpu',),
    'iothreadpin': ('@iothread',),
    'memnode': ('@cellid',),
    'cell': ('@id',),
    'boot': ('@dev',),
    'timer': ('@name',),
    'feature': ('@name',),
}
DEVICE_IDENTITY = ('alias.@name', 'address')  # any element that has them: devices
# Attribute values libvirt stores as "not set" and so never writes back: the zero of its enums is
# "default" (disk driver cache='default'), and numatune's placement='static' is implied by the
# nodeset that libvirt writes instead (formatdomain, NUMA Node Tuning).
OMITTED_DEFAULTS = {('memory', '@placement'): 'static'}
# libvirt's scaled integers (formatdomain, Memory Allocation): a unit, KiB when absent.
UNITS = {'b': 1, 'bytes': 1, 'KB': 10 ** 3, 'k': 2 ** 10, 'KiB': 2 ** 10, 'MB': 10 ** 6,
         'M': 2 ** 20, 'MiB': 2 ** 20, 'GB': 10 ** 9, 'G': 2 ** 30, 'GiB': 2 ** 30,
         'TB': 10 ** 12, 'T': 2 ** 40, 'TiB': 2 ** 40, 'PB': 10 ** 15, 'P': 2 ** 50,
         'PiB': 2 ** 50, 'EB': 10 ** 18, 'E': 2 ** 60, 'EiB': 2 ** 60}
SCALED = ('#text', '@size', '@memory')  # the values a sibling @unit scales
# Pairs of a list's items compared at most (a 1 MiB body can post 40,000 <metadata> items,
# and pairing every one with every other would hold a worker for half an hour or more); a real
# domain's lists stay far below.
MAX_PAIRS = 10000
# Numbers as libvirt reads them (64 bits at most: longer digit strings are text, not numbers).
DECIMAL = re.compile(r'[0-9]{1,20}\Z')
OCTAL = re.compile(r'0[0-7]{1,22}\Z')
HEX = re.compile(r'0[xX][0-9a-fA-F]{1,16}\Z')
CPU_SET = re.compile(r'\^?[0-9]{1,5}(-[0-9]{1,5})?(,\^?[0-9]{1,5}(-[0-9]{1,5})?)*\Z')
HEX_ID = re.compile(r'[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z|'  # a MAC, a UUID
                    r'[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\Z')


def dropped(posted, stored, path):
    """Paths of the parts of `posted` that are missing from `stored` (what libvirt dropped).

    A value libvirt kept in another form, or changed, is not missing: only what it left out.
    """
    return [where for where, kind in _differences(posted, stored, path, path) if kind == 'dropped']


def _differences(posted, stored, path, tag):
    """(path, 'dropped' or 'changed') for each part of `posted` that `stored` lacks or alters."""
    if isinstance(posted, list) or isinstance(stored, list):
        return _item_differences(_as_list(posted), _as_list(stored), path, tag)
    if not isinstance(posted, dict):
        if posted is None or _same(posted, _text(stored)):
            return []
        return [(path, 'changed')]
    # libvirt reads some elements' text as all the text inside them (XPath's string value):
    # children it stores as that text were kept, not dropped.
    as_text = _kept_as_text(posted, stored)
    if not isinstance(stored, dict):
        return [(f'{path}.{key}', 'dropped') for key in posted
                if key != '#text' and not (as_text and key[:1] != '@')]
    found = []
    scale = _scales(posted, stored)
    for key, value in posted.items():
        where = f'{path}.{key}'
        if key not in stored:
            if not (_posts_nothing(key, value) or _omitted_default(tag, key, value)
                    or as_text and key[:1] != '@'):
                found.append((where, 'dropped'))
        elif scale and key in SCALED:
            if _quantity(value, scale[0]) != _quantity(stored[key], scale[1]):
                found.append((where, 'changed'))
        elif not (scale and key == '@unit'):
            found += _differences(value, stored[key], where, key)
    return found


def _kept_as_text(posted, stored):
    """Whether libvirt stored the text of a posted element's children as its own text."""
    text = _text(stored)
    return (isinstance(text, str) and any(key[:1] not in '@#' for key in posted)
            and _same(_string_value(posted), text))


def _string_value(value):
    """The text of an element as dict_to_xml writes it (children first, then #text) and XPath's
    string() reads it back: all the text inside it."""
    if isinstance(value, list):
        return ''.join(_string_value(item) for item in value)
    if isinstance(value, dict):
        children = ''.join(_string_value(child) for key, child in value.items()
                           if key[:1] not in '@#')
        return children + _string_value(value.get('#text'))
    return '' if value is None else str(value)


def _item_differences(posted, stored, path, tag):
    """Pair each posted item with its own stored item, one to one, and compare them.

    Items libvirt stored exactly as posted pair first; then pairs that share an identity, then
    those that differ least; a posted item left without a stored one was dropped whole.
    """
    paired, taken = {}, set()
    twins = {}
    for j, candidate in enumerate(stored):
        twins.setdefault(_canonical(candidate), []).append(j)
    for i, item in enumerate(posted):
        if twins.get(_canonical(item)):
            paired[i] = []
            taken.add(twins[_canonical(item)].pop(0))
    rest = [i for i in range(len(posted)) if i not in paired]
    free = [j for j in range(len(stored)) if j not in taken]
    if len(rest) * len(free) > MAX_PAIRS:  # a pathological list: compare in order, in bounded time
        candidates = list(zip(rest, free))
    else:
        candidates = [(i, j) for i in rest for j in free]
    costs = []
    for i, j in candidates:
        same = _identity(posted[i], stored[j], tag)
        if same is not False:
            found = _differences(posted[i], stored[j], _item_path(path, i, posted), tag)
            costs.append((same is None, len(found), i, j, found))
    for _, _, i, j, differences in sorted(costs, key=lambda cost: cost[:4]):
        if i not in paired and j not in taken:
            paired[i] = differences
            taken.add(j)
    found = []
    for i in range(len(posted)):
        found += paired[i] if i in paired else [(_item_path(path, i, posted), 'dropped')]
    return found


def _canonical(item):
    """The JSON of an item as xml_to_dict would read it back, so that twins compare equal."""
    return json.dumps(_as_parsed(item), sort_keys=True)


def _as_parsed(value):
    if isinstance(value, list):
        items = [_as_parsed(item) for item in value]
        return items[0] if len(items) == 1 else items or None
    if isinstance(value, dict):
        parsed = {key: _as_parsed(child) for key, child in value.items()
                  if not _posts_nothing(key, child)}
        return parsed if set(parsed) - {'#text'} else parsed.get('#text')
    return None if value is None else str(value).strip() or None


def _item_path(path, index, items):
    return f'{path}[{index}]' if len(items) > 1 else path


def _identity(posted, stored, tag):
    """True: the same item by identity; False: two different items; None: nothing to tell by."""
    shared = False
    for key in IDENTITY.get(tag, ()) + DEVICE_IDENTITY:
        mine, theirs = _get(posted, key), _get(stored, key)
        if mine not in (None, '') and theirs is not None:
            if any(kind == 'changed' for _, kind in _differences(mine, theirs, '', '')):
                return False  # a part of it libvirt dropped is reported, it does not separate
            shared = True
    return True if shared else None


def _get(element, path):
    for key in path.split('.'):
        if not isinstance(element, dict):
            return None
        element = element.get(key)
    return element


def _posts_nothing(key, value):
    """An empty list, or blank text beside attributes: nothing of it reaches the XML parsed."""
    return value == [] or key == '#text' and not str(value).strip()


def _omitted_default(tag, key, value):
    return key.startswith('@') and value in ('default', OMITTED_DEFAULTS.get((tag, key)))


def _scales(posted, stored):
    """The (posted, stored) unit multipliers when either side states a unit libvirt knows."""
    if '@unit' not in posted and '@unit' not in stored:
        return None
    units = UNITS.get(posted.get('@unit', 'KiB')), UNITS.get(stored.get('@unit', 'KiB'))
    return units if None not in units else None


def _quantity(value, scale):
    number = _number(_text(value), False)
    return value if number is None else number * scale


def _text(value):
    return value.get('#text') if isinstance(value, dict) else value


def _same(posted, stored):
    """Whether libvirt's `stored` text is the posted value, in the form libvirt writes it."""
    posted, stored = str(posted).strip(), stored or ''  # as xml_to_dict reads text back
    if not stored or posted == stored:
        return posted == stored
    c_rules = bool(HEX.match(stored))
    for normal in (lambda text: _number(text, c_rules), _cpu_set, _hex_id):
        mine, theirs = normal(posted), normal(stored)
        if mine is not None and theirs is not None:
            return mine == theirs
    return False


def _number(text, c_rules):
    """An integer as libvirt reads it: decimal (leading zeros allowed); where libvirt writes hex
    (addresses, USB ids), C's rules: 0x hex, a leading 0 octal."""
    if not isinstance(text, str):
        return None
    if HEX.match(text):
        return int(text, 16)
    if c_rules and text.startswith('0') and len(text) > 1:
        return int(text, 8) if OCTAL.match(text) else None  # '09' is no number in C
    return int(text) if DECIMAL.match(text) else None


def _cpu_set(text):
    """A cpuset or nodeset ("0-3,^2"), which libvirt writes back in its shortest form; CPU_SET's
    five digits bound the set built here."""
    if not CPU_SET.match(text):
        return None
    included, excluded = set(), set()
    for part in text.split(','):
        into = excluded if part.startswith('^') else included
        first, _, last = part.lstrip('^').partition('-')
        into.update(range(int(first), int(last or first) + 1))
    return included - excluded


def _hex_id(text):
    """A MAC or UUID: libvirt parses them as numbers and writes them lower case."""
    return text.lower().replace('-', '') if HEX_ID.match(text) else None


def _as_list(value):
    return value if isinstance(value, list) else [value]
