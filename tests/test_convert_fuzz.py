"""JSON -> XML is safe: random documents full of markup characters either are refused (400) or
come out as XML that parses to exactly the input; no value ever becomes markup."""
import xml.etree.ElementTree as ElementTree

import pytest
import xmltodict
from hypothesis import given, settings, strategies as st

from xend_rest.errors import HTTPError
from xend_rest.hypervisor import convert

NASTY = list('<>&\'"]!-?/=;:#@[ \t\r\n') + [']]>', '<!--', '<![CDATA[', '&amp;', '&#0;', '<?xml ',
                                             '<!DOCTYPE x [<!ENTITY e "boom">]>', '&e;', 'a', 'é']
# Characters XML 1.0 cannot carry at all, then odd ones it can.
UNCARRIABLE = ['\x00', '\x01', '\x08', '\x0b', '\x0c', '\x1f', '\ud800', '\udfff', '\ufffe', '\uffff']
CONTROL = UNCARRIABLE + ['\x7f', '\x85', '\u2028', '\U0001F600']

names = st.from_regex(r'[A-Za-z_][A-Za-z0-9_.-]{0,6}', fullmatch=True).filter(
    lambda name: not name.lower().startswith('xml'))
nasty_text = st.lists(st.sampled_from(NASTY), max_size=8).map(''.join)
texts = nasty_text | st.text(max_size=10)
scalars = st.none() | st.integers(-2 ** 63, 2 ** 63) | texts | st.floats(
    allow_nan=False, allow_infinity=False)
# Keys a client may send that are not XML names, or are names XML reserves.
bad_keys = (st.lists(st.sampled_from(NASTY + CONTROL), min_size=1, max_size=5).map(''.join)
            | st.sampled_from(['', '1a', '-a', 'a b', 'xml', 'XMLfoo', '#comment', 'a:b', '²',
                               'a\u0660', '@', '@@a', '#text2', '?pi'])).filter(
    lambda key: (not convert.XML_NAME.match(key) or ':' in key or key.lower().startswith('xml'))
    and not _is_attribute_key(key))


def _is_attribute_key(key):
    """'@a' (joined from '@' and 'a') is a good attribute key, not a bad one."""
    name = key[1:]
    return (key.startswith('@') and bool(convert.XML_NAME.match(name)) and ':' not in name
            and not name.lower().startswith('xml'))


def elements(keys, text, attribute_names):
    """An element in the xmltodict shape: a scalar, or attributes, #text and children."""
    def element_dict(children):
        child = children | st.lists(children, min_size=1, max_size=3)
        return st.fixed_dictionaries({}, optional={'#text': text}).flatmap(
            lambda base: st.dictionaries(attribute_names.map('@'.__add__), text, max_size=3).flatmap(
                lambda attrs: st.dictionaries(keys, child, max_size=4).map(
                    lambda kids: {**base, **attrs, **kids})))
    leaf = st.none() | text
    return st.recursive(leaf, element_dict, max_leaves=20)


good_text = texts.filter(lambda value: not convert.XML_INVALID_CHARS.search(value)) | st.integers(
    -2 ** 63, 2 ** 63)
good_elements = elements(names, good_text, names)
any_elements = elements(names | bad_keys, scalars | st.sampled_from(CONTROL), names | bad_keys)


def expected(value):
    """What xml_to_dict reads back: text as stripped strings (\\r as \\n), one-item lists unwrapped,
    empty lists gone, empty elements None."""
    if isinstance(value, list):
        items = [expected(item) for item in value]
        return items[0] if len(items) == 1 else items
    if isinstance(value, dict):
        node = {}
        for key, child in value.items():
            if key == '#text':
                text = _text(child)
                if text:
                    node[key] = text
            elif key.startswith('@'):
                node[key] = str(child)
            elif child != []:
                node[key] = expected(child)
        if list(node) == ['#text']:
            return node['#text']
        return node or None
    return _text(value) or None


def _text(value):
    return None if value is None else str(value).replace('\r\n', '\n').replace('\r', '\n').strip()


def assert_round_trip(doc, xml):
    """The XML holds no markup but elements and attributes, and reads back as exactly doc."""
    assert '<!' not in xml and '<?' not in xml and ']]>' not in xml
    ElementTree.fromstring(xml)  # a namespace-aware parser accepts it too
    assert convert.xml_to_dict(xml) == {'domain': expected(doc['domain'])}
    assert xmltodict.parse(xml) == {'domain': expected(doc['domain'])}


@settings(max_examples=150, deadline=None)
@given(good_elements.filter(lambda element: not isinstance(element, list)))
def test_valid_documents_come_back_exactly(element):
    doc = {'domain': element}
    assert_round_trip(doc, convert.dict_to_xml(doc, 'domain'))


@settings(max_examples=150, deadline=None)
@given(any_elements.filter(lambda element: not isinstance(element, list)))
def test_any_document_is_refused_or_comes_back_exactly(element):
    doc = {'domain': element}
    try:
        xml = convert.dict_to_xml(doc, 'domain')
    except HTTPError as err:
        assert err.status == 400 and err.code == 'bad_parameter'
        return
    assert_round_trip(doc, xml)


@given(bad_keys)
def test_a_key_that_is_no_xml_name_is_refused(key):
    for doc in ({'domain': {key: 'x'}}, {'domain': {'@' + key: 'x'}}, {key: {}}):
        with pytest.raises(HTTPError) as refused:
            convert.dict_to_xml(doc, next(iter(doc)))
        assert refused.value.status == 400


@given(st.sampled_from(UNCARRIABLE), st.sampled_from(['name', '@type', '#text']))
def test_a_character_xml_cannot_carry_is_refused(char, key):
    with pytest.raises(HTTPError) as refused:
        convert.dict_to_xml({'domain': {key: 'a' + char}}, 'domain')
    assert refused.value.status == 400


def test_a_doctype_in_a_value_stays_text():
    value = '<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><name>&x;</name>'
    doc = {'domain': {'name': value, 'description': {'@a': value, '#text': value}}}
    xml = convert.dict_to_xml(doc, 'domain')
    assert_round_trip(doc, xml)


@pytest.mark.parametrize('xml', [
    '<!DOCTYPE domain [<!ENTITY e "boom">]><domain><name>&e;</name></domain>',
    '<!DOCTYPE domain [<!ENTITY e SYSTEM "file:///etc/passwd">]><domain xmlns:a="u">&e;</domain>',
    '<!DOCTYPE domain [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    '<domain>&b;</domain>',
])
def test_parsing_refuses_a_document_type_declaration(xml):
    with pytest.raises(ValueError):
        convert.xml_to_dict(xml)


def test_an_undeclared_entity_is_an_error_not_a_lookup():
    with pytest.raises(ElementTree.ParseError):
        convert.xml_to_dict('<domain><name>&passwd;</name></domain>')


@pytest.mark.parametrize('doc', [
    {'domain': {'app:x': '1'}},
    {'domain': {'metadata': {'app:x': {'@other:y': '1', '@xmlns:app': 'http://example.org/a'}}}},
    {'domain': {'metadata': {'@xmlns:app': ''}}},
    {'domain': {'metadata': {'@xmlns:xml': 'http://example.org/a'}}},
    {'domain': {'@xmlfoo': '1'}},
])
def test_namespaces_must_be_declared(doc):
    with pytest.raises(HTTPError) as refused:
        convert.dict_to_xml(doc, 'domain')
    assert refused.value.status == 400


@pytest.mark.parametrize('doc', [
    {'domain': {'metadata': {'app:x': {'@xmlns:app': 'http://example.org/a', '#text': '1'}}}},
    {'domain': {'@xmlns:app': 'http://example.org/a', 'metadata': {'app:x': {'@app:y': '2'}}}},
    {'domain': {'metadata': {'app:x': [{'@xmlns:app': 'u:a'}, {'@xmlns:app': 'u:b'}]}}},
    {'domain': {'description': {'@xml:lang': 'en', '#text': 'hello'}}},
])
def test_declared_namespaces_are_accepted(doc):
    xml = convert.dict_to_xml(doc, 'domain')
    ElementTree.fromstring(xml)
    assert xmltodict.parse(xml) == {'domain': expected(doc['domain'])}
