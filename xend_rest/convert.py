"""libvirt XML <-> JSON, in the xmltodict shape, the same both ways.

An element becomes a dict: attributes as "@name", text as "#text", children by tag; an element
with only text becomes that string, an empty one None; a repeated child becomes a list.
"""
import functools
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
# Characters XML 1.0 cannot carry at all, even escaped (lone surrogates cannot even be encoded).
XML_INVALID_CHARS = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')


class JSONText(str):
    """JSON already serialised, which the app sends as it is."""


@functools.lru_cache(maxsize=1024)
def xml_to_json(xml):
    """The JSON text of xml_to_dict(xml), keys sorted.

    Memoised on the XML text itself, so it is never stale: a domain's XML rarely changes between
    two polls, and parsing plus serialising is most of what an Inspect or a List costs.
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


def dict_to_xml(doc, root):
    """Turn a JSON document {root: {...}} back into XML, refusing anything XML cannot express."""
    if not isinstance(doc, dict) or list(doc) != [root]:
        raise bad_request('the body must be a JSON object with the single key "%s"' % root)
    if not _is_element_name(root):
        raise bad_request('%s: not a valid XML element name' % root)
    if isinstance(doc[root], list):
        raise bad_request('%s: must be one object, not a list' % root)
    _check_prefix(root, _declared(doc[root], XML_PREFIXES), root)
    _check(doc[root], root, XML_PREFIXES)
    return xmltodict.unparse(doc, full_document=False)


def device_to_xml(doc):
    """A single device {"disk": {...}} as XML."""
    if not isinstance(doc, dict) or len(doc) != 1:
        raise bad_request('the body must be a JSON object with one key, the device type, '
                          'e.g. {"disk": {...}}')
    return dict_to_xml(doc, next(iter(doc)))


def _check(value, path, inherited):
    """Validate one JSON value standing for the element at `path`; `inherited`: prefixes in scope."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, list):
                raise bad_request('%s[%d]: a list cannot hold a list' % (path, index))
            _check(item, '%s[%d]' % (path, index), inherited)
    elif isinstance(value, dict):
        prefixes = _declared(value, inherited)
        for key, child in value.items():
            where = '%s.%s' % (path, key)
            if key == '#text':
                _check_scalar(child, where)
            elif key.startswith('@'):
                name = key[1:]
                if not XML_NAME.match(name) or (XML_RESERVED.match(name) and
                                                not XML_ATTRIBUTES.match(name)):
                    raise bad_request('%s: not a valid XML attribute name' % where)
                if name.startswith('xmlns:'):
                    _check_declaration(name, child, where)
                elif name != 'xmlns':
                    _check_prefix(name, prefixes, where)
                _check_scalar(child, where)
            elif not _is_element_name(key):
                raise bad_request('%s: not a valid XML element name' % where)
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
        raise bad_request('%s: namespace prefix "%s" is not declared (add "@xmlns:%s")'
                          % (where, prefix, prefix))


def _check_declaration(name, uri, where):
    if name in ('xmlns:xml', 'xmlns:xmlns') or uri in ('', None):
        raise bad_request('%s: a namespace declaration needs its own prefix and a URI' % where)


def _check_scalar(value, path):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad_request('%s: expected a string or a number' % path)
    if isinstance(value, str) and XML_INVALID_CHARS.search(value):
        raise bad_request('%s: contains a character XML cannot carry' % path)


def dropped(posted, stored, path):
    """Paths of the parts of `posted` that are missing from `stored` (what libvirt dropped)."""
    if not isinstance(posted, (dict, list)):
        return []
    if isinstance(posted, list) or isinstance(stored, list):
        return _dropped_items(_as_list(posted), _as_list(stored), path)
    if not isinstance(stored, dict):
        return [path + '.' + key for key in posted if key != '#text']
    missing = []
    for key, value in posted.items():
        if key not in stored:
            missing.append('%s.%s' % (path, key))
        else:
            missing += dropped(value, stored[key], '%s.%s' % (path, key))
    return missing


def _dropped_items(posted, stored, path):
    """Each posted item is compared with the stored item that kept most of it."""
    missing = []
    for index, item in enumerate(posted):
        where = '%s[%d]' % (path, index) if len(posted) > 1 else path
        candidates = [dropped(item, candidate, where) for candidate in stored]
        if not candidates:
            missing.append(where)
        else:
            missing += min(candidates, key=len)
    return missing


def _as_list(value):
    return value if isinstance(value, list) else [value]
