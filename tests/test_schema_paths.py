"""The guard reads a definition's host paths where libvirt does: the places its schemas (domain,
network) type as paths (xend_rest/api/schema_paths.py, generated from them), and, checked from
the other side, every path libvirt stores when it defines its own test definitions."""
import os
import re

import libvirt
import pytest

import libvirt_schema
import libvirt_testdata
from xend_rest.api import host_paths
from xend_rest.api.schema_paths import SCHEMA_PATHS
from xend_rest.errors import HTTPError
from xend_rest.hypervisor import convert

# A value every path type of the schema takes, and that no other type should.
SAMPLE = '/etc/shadow'
# Where a stored host path is judged only because it is absolute (host_paths.host_access): places
# whose schema type also holds names that are no paths, so they cannot be judged when relative.
ABSOLUTE_ONLY = {
    ('interface', 'source', '@dev'): "a vDPA device's path, or a host network device's name",
}
# Paths libvirt fills in itself where a definition gives none: its choice, not the client's.
LIBVIRT_DEFAULTS = {
    (('rng', 'backend', '#text'), '/dev/random'): "<backend model='random'/> reads /dev/random",
}


def unavailable(reason):
    """Loud: on CI (Debian, with libvirt0 and its mirrors) a missing piece is a failure."""
    message = f'LIBVIRT SCHEMA CHECK NOT RUN: {reason}'
    if os.environ.get('CI'):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope='module')
def schema():
    if not os.path.exists(os.path.join(libvirt_schema.SCHEMAS, 'domain.rng')):
        unavailable(f'{libvirt_schema.SCHEMAS}/domain.rng is missing (package libvirt0)')
    return libvirt_schema.load_all()


def test_the_table_is_the_installed_schemas(schema):
    """Regenerate with: python tests/libvirt_schema.py > xend_rest/api/schema_paths.py"""
    assert libvirt_schema.path_table(schema) == SCHEMA_PATHS


def test_every_type_that_can_hold_a_path_is_known(schema):
    """A data type of the schema that takes an absolute path is judged by the guard as a path
    (HOST_TYPES), or is known to name something else (OTHER_TYPES): a type libvirt adds fails."""
    def takes_a_path(node):
        for data in node.iter(libvirt_schema.RNG + 'data'):
            patterns = [param.text for param in data.iter(libvirt_schema.RNG + 'param')
                        if param.get('name') == 'pattern']
            if data.get('type') == 'string' and all(re.fullmatch(p, SAMPLE) for p in patterns):
                return True
        return False
    types = {name for defines in schema for name, node in libvirt_schema.data_types(defines).items()
             if takes_a_path(node)}
    assert types - set(libvirt_schema.HOST_TYPES) == set(libvirt_schema.OTHER_TYPES)


def element(chain, value):
    """A JSON definition holding value at chain ('domain', ..., '@attribute' or '#text')."""
    leaf = {chain[-1]: value} if chain[-1] != '#text' else value
    for name in reversed(chain[:-1]):
        leaf = {name: leaf}
    return leaf


def test_every_place_the_schema_types_as_a_path_is_judged(schema):
    """Relative values too: the hypervisor resolves them against a directory of its own."""
    typed, _ = libvirt_schema.all_places(schema)
    assert typed and any(chain[0] == 'network' for chain in typed)
    for chain in typed:
        for value in (SAMPLE, 'relative', 'unix:path=/etc/x'):
            judged = host_paths.host_access(host_paths.sent_xml(element(chain, value)))
            spelt = '.'.join(chain[:-1] if chain[-1] == '#text' else chain)
            kinds = [kind for where, kind, _ in judged if where == spelt]  # the value's own
            if host_paths._at(chain, host_paths.NOT_HOST_PATHS) is None:
                assert kinds in (['path'], ['dbus']), chain


@pytest.fixture(scope='module')
def definitions():
    try:
        directory = libvirt_testdata.definitions()
    except libvirt_testdata.Unavailable as err:
        unavailable(f"libvirt's test definitions: {err}")
    return sorted(directory.glob('*/*.xml'))


@pytest.fixture(scope='module')
def test_node(tmp_path_factory):
    path = tmp_path_factory.mktemp('node') / 'node.xml'
    path.write_text('<node><cpu><mhz>2400</mhz><model>x86_64</model><nodes>1</nodes>'
                    '<sockets>1</sockets><cores>4</cores><threads>2</threads></cpu>'
                    '<memory>1073741824</memory></node>')
    conn = libvirt.open(f'test://{path}')
    yield conn
    conn.close()


def stored_paths(value, chain=()):
    """(place, value) of what a stored definition names as a host path: a value starting with
    '/', or any at a place the guard types as a path (outside <metadata> and NOT_HOST_PATHS)."""
    if isinstance(value, list):
        for item in value:
            yield from stored_paths(item, chain)
    elif isinstance(value, dict):
        for key, item in value.items():
            if chain + (key,) != ('domain', 'metadata'):
                yield from stored_paths(item, chain + (key,))
    elif value is not None:
        place = chain if chain[-1][0] in '@#' else chain + ('#text',)
        if host_paths._at(place, host_paths.NOT_HOST_PATHS) is None and (
                str(value).startswith('/') or host_paths._at(place, host_paths.PATH_PLACES)):
            yield place, value


def split(value):
    """Every text with a '/' in it, given as two children instead ({"a": ["/", "usr/bin/x"]}):
    libvirt reads an element's text as all the text inside it, children's included."""
    if isinstance(value, list):
        return [split(item) for item in value]
    if isinstance(value, dict):
        if set(value) & {key for key in value if key[0] not in '@#'}:
            return {key: split(item) for key, item in value.items()}
        text = value.get('#text')
        if isinstance(text, str) and '/' in text:
            return {**{key: item for key, item in value.items() if key != '#text'},
                    'a': [text[:1], text[1:]]}
        return value
    return {'a': [value[:1], value[1:]]} if isinstance(value, str) and '/' in value else value


@pytest.mark.parametrize('spelling', [lambda doc: doc, split], ids=['as written', 'text split'])
def test_every_path_libvirt_stores_was_judged(definitions, test_node, spelling):
    """Each of libvirt's test definitions (QEMU, Xen, LXC) the test driver takes, posted as a
    client would (as written, or with each text that holds a '/' split over child elements):
    every host path libvirt stored is one the guard judged, by its place."""
    unjudged, defined = {}, 0
    for path in definitions:
        posted = convert.xml_to_dict(path.read_text())
        if not isinstance(posted.get('domain'), dict):
            continue
        posted = {'domain': spelling(posted['domain'])}
        posted['domain'].update({'@type': 'test', 'name': 'probe'})  # the test driver's type
        posted['domain'].pop('uuid', None)
        try:
            dom = test_node.defineXML(convert.dict_to_xml(posted, 'domain'))
        except (HTTPError, libvirt.libvirtError):
            continue  # refused (by us, or by the test driver): nothing stored to look at
        stored = convert.xml_to_dict(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE |
                                                 libvirt.VIR_DOMAIN_XML_SECURE))
        dom.undefine()
        defined += 1
        judged = {(kind, str(value)) for _, kind, value
                  in host_paths.host_access(host_paths.sent_xml(posted))}
        for place, value in stored_paths(stored):
            if ('path', value) in judged or ('dbus', value) in judged:
                continue
            if ('absolute', value) in judged and host_paths._at(place, ABSOLUTE_ONLY):
                continue
            if any(place[-len(key):] == key and value == default for key, default in LIBVIRT_DEFAULTS):
                continue
            unjudged.setdefault('/'.join(place), f'{path.parent.name}/{path.name}: {value!r}')
    assert defined > len(definitions) / 2  # a fair sample of what libvirt parses
    assert unjudged == {}
