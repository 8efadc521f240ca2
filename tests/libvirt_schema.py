"""Where libvirt's domain and network schemas say a definition names a host path: read from the
RELAX NG grammars libvirt installs (/usr/share/libvirt/schemas/domain.rng, network.rng and what
they include).

`python tests/libvirt_schema.py > xend_rest/api/schema_paths.py` regenerates the table the guard
reads; tests/test_schema_paths.py fails while the committed table differs from this output.
"""
import os
import sys
import xml.etree.ElementTree as ElementTree

SCHEMAS = '/usr/share/libvirt/schemas'
RNG = '{http://relaxng.org/ns/structure/1.0}'
# The schema's data types that hold a host path, and how the guard judges a value of each:
# 'path' always (a relative one too: the hypervisor resolves it against its own directory),
# 'dbus' by the socket path in a D-Bus address (unix:path=...).
HOST_TYPES = {'absFilePath': 'path', 'absDirPath': 'path', 'filePath': 'path', 'dirPath': 'path',
              'vmwarePath': 'path', 'dbusAddr': 'dbus'}
# The other types a value starting with '/' fits, and why the guard does not judge them by type:
# every absolute value outside <metadata> and host_paths.NOT_HOST_PATHS is judged anyway.
OTHER_TYPES = {
    'deviceName': 'a host network device, a guest device, or a host device path (judged when '
                  'absolute, like any absolute value)',
    'objectNameWithSlash': "a domain's title",
    'timeZone': "a time zone's name",
    'sysinfo-value': 'text the guest reads (SMBIOS strings)',
    'virtualPortProfileID': "a network port profile's name",
}
# Names of the places in a definition: element local names, then '@attribute' or '#text'.
TEXT = '#text'
# The definitions a client posts whole (api/host_paths.py DEFINITIONS), by their grammars.
GRAMMARS = ('domain.rng', 'network.rng')


def load(directory=SCHEMAS, name='domain.rng', defines=None):
    """{define name: [its <define> nodes]} of a grammar and its includes; '' is <start>."""
    defines = {} if defines is None else defines
    for node in ElementTree.parse(os.path.join(directory, name)).getroot():
        if node.tag == RNG + 'include':
            load(directory, node.get('href'), defines)
            for override in node.findall(RNG + 'define'):
                defines[override.get('name')] = [override]
        elif node.tag == RNG + 'define':
            defines.setdefault(node.get('name'), []).append(node)  # combine="choice" adds
        elif node.tag == RNG + 'start':
            defines.setdefault('', []).append(node)
    return defines


def load_all(directory=SCHEMAS):
    """[the defines of each of GRAMMARS]."""
    return [load(directory, name) for name in GRAMMARS]


def all_places(grammars):
    """places() of several grammars together (their chains start with their roots' names)."""
    typed, other = {}, set()
    for defines in grammars:
        found, rest = places(defines)
        for chain, types in found.items():
            typed.setdefault(chain, set()).update(types)
        other |= rest
    return typed, other - set(typed)


def data_types(defines):
    """{name: node} of the defines that are a data type (data, values and choices of them)."""
    plain = {RNG + tag for tag in ('define', 'data', 'param', 'choice', 'value', 'except')}
    return {name: nodes[0] for name, nodes in defines.items()
            if name and all(sub.tag in plain for node in nodes for sub in node.iter())
            and any(sub.tag == RNG + 'data' for node in nodes for sub in node.iter())}


def places(defines):
    """({chain: {host types}}, {chain}) for every attribute and element text the grammar allows
    under <domain>: the chains (element names..., '@attribute' or '#text') whose values are of a
    host type, and the other chains. A define already being walked is not entered again, so each
    recursion (backingStore in backingStore) is walked once."""
    typed, other = {}, set()

    def types_in(node, seen):
        """The host types a value's content may take (not looking into nested elements)."""
        found = set()
        for child in node:
            if child.tag == RNG + 'ref':
                name = child.get('name')
                if name in HOST_TYPES:
                    found.add(name)
                elif name not in seen:
                    for define in defines.get(name, ()):
                        found |= types_in(define, seen | {name})
            elif child.tag not in (RNG + 'element', RNG + 'attribute'):
                found |= types_in(child, seen)
        return found

    def visit(node, chain, walking):
        tag = node.tag[len(RNG):]
        if tag == 'element':
            if node.get('name') is None or node.get('ns'):  # any name, or a hypervisor's
                return
            chain += (node.get('name'),)
            found = types_in(node, walking)
            if found:
                typed.setdefault(chain + (TEXT,), set()).update(found)
            elif _holds_text(node, walking):
                other.add(chain + (TEXT,))
        elif tag == 'attribute':
            if node.get('name') is not None:
                found = types_in(node, walking)
                place = chain + ('@' + node.get('name'),)
                if found:
                    typed.setdefault(place, set()).update(found)
                else:
                    other.add(place)
            return
        elif tag == 'ref':
            name = node.get('name')
            if name in walking or name in HOST_TYPES:
                return
            for define in defines.get(name, ()):
                for child in define:
                    visit(child, chain, walking | {name})
            return
        for child in node:
            visit(child, chain, walking)

    def _holds_text(node, walking):
        for child in node:
            if child.tag in (RNG + 'text', RNG + 'data', RNG + 'value'):
                return True
            if child.tag == RNG + 'ref' and child.get('name') not in walking:
                if any(_holds_text(define, walking | {child.get('name')})
                       for define in defines.get(child.get('name'), ())):
                    return True
            elif child.tag not in (RNG + 'element', RNG + 'attribute', RNG + 'ref'):
                if _holds_text(child, walking):
                    return True
        return False

    for start in defines['']:
        for child in start:
            visit(child, (), frozenset())
    return typed, other - set(typed)


def path_table(grammars=None):
    """{key: kind}: for each place of a host type (in any of the grammars), the shortest tail of
    its chain (two names at least) that no place of another kind ends with; kind as HOST_TYPES
    says ('path' where a place takes several types)."""
    typed, other = all_places(load_all() if grammars is None else grammars)
    kinds = {chain: 'path' if 'path' in {HOST_TYPES[t] for t in found} else 'dbus'
             for chain, found in typed.items()}
    table = {}
    for chain, kind in kinds.items():
        for length in range(2, len(chain) + 1):
            key = chain[-length:]
            if not any(place[-length:] == key for place in other) and not any(
                    place[-length:] == key and found != kind for place, found in kinds.items()):
                break
        table[key] = kind
    return table


def chains_by_key(grammars=None):
    """{key: [the chains of the schemas it stands for]}, for the generated table's comments."""
    grammars = load_all() if grammars is None else grammars
    typed, _ = all_places(grammars)
    table = path_table(grammars)
    return {key: sorted('/'.join(chain) for chain in typed if chain[-len(key):] == key)
            for key in table}


def module(grammars=None, version='?'):
    """The text of xend_rest/api/schema_paths.py."""
    grammars = load_all() if grammars is None else grammars
    table, chains = path_table(grammars), chains_by_key(grammars)
    lines = [
        '"""Where libvirt\'s domain and network schemas type a value as a host path (generated: do',
        'not edit).',
        '',
        f'Read from libvirt {version}\'s {SCHEMAS}/domain.rng and network.rng by',
        'tests/libvirt_schema.py; tests/test_schema_paths.py fails while the installed schemas',
        'give another table. A place is the shortest tail of element names, then \'@attribute\'',
        'or \'#text\', that only places of its kind end with: \'path\' (a file, directory, device',
        'or socket) or \'dbus\' (a D-Bus address). The comment gives the first place it stands',
        'for (under <domain>, or under the <network> it names) and how many more.',
        '"""',
        'SCHEMA_PATHS = {']
    for key in sorted(table, key=lambda key: (key[-1], key)):
        more = f' (+{len(chains[key]) - 1})' if len(chains[key]) > 1 else ''
        first = chains[key][0].removeprefix('domain/')
        lines.append(f'    {key!r}: {table[key]!r},  # {first}{more}')
    lines.append('}')
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    import libvirt
    number = libvirt.getVersion()
    sys.stdout.write(module(version=f'{number // 1000000}.{number // 1000 % 1000}.{number % 1000}'))
