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

# Names we accept as JSON keys: a conservative subset of XML names (no namespaces, no colons
# other than a single prefix separator, which libvirt's own metadata uses).
XML_NAME = re.compile(r'[A-Za-z_][\w.-]*(:[A-Za-z_][\w.-]*)?\Z')
# Characters XML 1.0 cannot carry at all, even escaped.
XML_INVALID_CHARS = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]')


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
    if 'xmlns' in xml:
        return xmltodict.parse(xml)
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
    if not XML_NAME.match(root):
        raise bad_request('%s: not a valid XML element name' % root)
    if isinstance(doc[root], list):
        raise bad_request('%s: must be one object, not a list' % root)
    _check(doc[root], root)
    return xmltodict.unparse(doc, full_document=False)


def device_to_xml(doc):
    """A single device {"disk": {...}} as XML."""
    if not isinstance(doc, dict) or len(doc) != 1:
        raise bad_request('the body must be a JSON object with one key, the device type, '
                          'e.g. {"disk": {...}}')
    return dict_to_xml(doc, next(iter(doc)))


def _check(value, path):
    """Validate one JSON value standing for the element at `path`."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, list):
                raise bad_request('%s[%d]: a list cannot hold a list' % (path, index))
            _check(item, '%s[%d]' % (path, index))
    elif isinstance(value, dict):
        for key, child in value.items():
            where = '%s.%s' % (path, key)
            if key == '#text':
                _check_scalar(child, where)
            elif key.startswith('@'):
                if not XML_NAME.match(key[1:]):
                    raise bad_request('%s: not a valid XML attribute name' % where)
                _check_scalar(child, where)
            elif not XML_NAME.match(key):
                raise bad_request('%s: not a valid XML element name' % where)
            else:
                _check(child, where)
    elif value is not None:
        _check_scalar(value, path)


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
