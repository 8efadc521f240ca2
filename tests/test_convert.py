"""The converter: the xmltodict shape both ways, fast path identical to xmltodict.parse."""
import pytest
import xmltodict

from xend_rest.errors import HTTPError
from xend_rest.hypervisor import convert

SAMPLES = [
    "<domain type='xen'><name>a</name></domain>",
    "<domain><devices><disk a='1'/><disk a='2'/><disk a='3'><readonly/></disk></devices></domain>",
    "<domain><vcpu placement='static' current='1'>4</vcpu><on_crash>restart</on_crash></domain>",
    "<domain><description>  spaced  text\n</description><empty></empty><e2/></domain>",
    "<domain><mixed>one<b>x</b>two</mixed></domain>",
    "<domain><a>1</a><b/><a>2</a></domain>",
    "<domain><title>caf\u00e9 &amp; &lt;bar&gt;</title></domain>",
    "<domain><metadata><app:x xmlns:app='http://example.org/app'>1</app:x></metadata></domain>",
]


@pytest.mark.parametrize('xml', SAMPLES)
def test_fast_parse_matches_xmltodict(xml):
    assert convert.xml_to_dict(xml) == xmltodict.parse(xml)


@pytest.mark.parametrize('xml', SAMPLES[:4] + SAMPLES[5:])
def test_json_back_to_xml_and_again_is_stable(xml):
    doc = convert.xml_to_dict(xml)
    assert convert.xml_to_dict(convert.dict_to_xml(doc, 'domain')) == doc


def test_numbers_are_written_as_text():
    xml = convert.dict_to_xml({'domain': {'vcpu': 2, 'memory': {'@unit': 'KiB', '#text': 1024}}},
                              'domain')
    assert convert.xml_to_dict(xml) == {
        'domain': {'vcpu': '2', 'memory': {'@unit': 'KiB', '#text': '1024'}}}


@pytest.mark.parametrize('doc', [
    {'domain': {'name': {'@a b': '1'}}}, {'domain': {'-x': '1'}}, {'domain': {'a': [[]]}},
    {'domain': {'a': {'@b': None}}}, {'domain': {'a': {'@b': {'c': 1}}}},
    {'domain': {'a': '\x1b[31m'}}, {'domain': {'a': False}}, {'domain': [{}]},
    {'domain': {}, 'other': {}}, ['domain'],
])
def test_unrepresentable_json_is_refused(doc):
    with pytest.raises(HTTPError) as raised:
        convert.dict_to_xml(doc, 'domain')
    assert raised.value.status == 400


@pytest.mark.parametrize('posted, stored, expected', [
    ({'a': '1'}, {'a': '2'}, []),
    ({'a': '1', 'b': None}, {'a': '1'}, ['d.b']),
    ({'x': [{'@k': '1'}, {'@k': '2', '@z': '1'}]}, {'x': [{'@k': '1'}, {'@k': '2'}]}, ['d.x[1].@z']),
    ({'x': {'@k': '1'}}, {'x': [{'@j': '0'}, {'@k': '1', '@extra': '1'}]}, []),
    ({'x': {'y': '1'}}, {'x': 'text'}, ['d.x.y']),
])
def test_dropped_lists_what_is_missing(posted, stored, expected):
    assert convert.dropped(posted, stored, 'd') == expected


def test_json_text_is_the_sorted_json_of_the_dict():
    import json
    xml = "<domain type='xen'><name>a</name><devices><disk/><disk a='1'/></devices></domain>"
    text = convert.xml_to_json(xml)
    assert json.loads(text) == xmltodict.parse(xml)
    assert text == json.dumps(xmltodict.parse(xml), sort_keys=True)
    assert convert.xml_to_json(xml.replace("'1'", "'2'")) != text


def test_inspect_follows_a_change_made_behind_our_back(api):
    first = api.get('/libvirt/xen/nodes/web/json').json
    api.conn.lookupByName('web').setMemoryFlags(524288, 1)  # live, not through the API
    second = api.get('/libvirt/xen/nodes/web/json').json
    assert first['domain']['currentMemory']['#text'] == '1048576'
    assert second['domain']['currentMemory']['#text'] == '524288'
