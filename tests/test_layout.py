"""The package's layers import one way (docs/layout.md): every import of every module, those inside
functions included, against a table of the edges allowed; the server runs without libvirt; no
subpackage imports its modules eagerly; the import paths kept for embedders still work."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Client

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'xend_rest'

# Modules every layer may import: they import none of the layers.
NEUTRAL = {'xend_rest.errors', 'xend_rest.headers', 'xend_rest.logtext', 'xend_rest.defaults',
           'xend_rest'}  # the package itself (for __version__): its __init__ imports nothing
TOP = {'xend_rest.__init__', 'xend_rest.__main__', 'xend_rest.cli', 'xend_rest.wsgi',
       'xend_rest.demo'}
ALIASES = {'xend_rest.connection': 'hypervisor', 'xend_rest.sessions': 'server'}
LAYERS = ('server', 'api', 'hypervisor', 'consoles')
# What each kind of module may import besides the standard library.
ALLOWED = {
    'neutral': {'neutral'},
    'server': {'neutral', 'server'},
    'hypervisor': {'neutral', 'hypervisor', 'libvirt', 'xmltodict'},
    'consoles': {'neutral', 'consoles', 'hypervisor', 'libvirt'},
    'api': {'neutral', 'api', 'hypervisor', 'consoles', 'libvirt'},
    'top': {'neutral', 'top', *LAYERS, 'libvirt'},
    'alias:server': {'server'},
    'alias:hypervisor': {'hypervisor'},
}


def modules():
    """{dotted name: path} of every module of the package ('xend_rest.__init__' for its own)."""
    found = {}
    for path in sorted(PACKAGE.rglob('*.py')):
        parts = path.relative_to(ROOT).with_suffix('').parts
        found['.'.join(parts)] = path
    return found


def kind(name):
    """What an imported or importing module is: a layer, 'neutral', 'top', an alias, or a
    third-party distribution's top-level name ('libvirt')."""
    if name in NEUTRAL:
        return 'neutral'
    if name in TOP:
        return 'top'
    if name in ALIASES:
        return 'alias:' + ALIASES[name]
    parts = name.split('.')
    if parts[0] == 'xend_rest':
        assert len(parts) > 1 and parts[1] in LAYERS, f'{name} is in no layer (docs/layout.md)'
        return parts[1]
    return parts[0]


def imports(name, path):
    """(line, imported module) for every import in a module, wherever it stands: 'from PKG
    import NAME' is the module PKG.NAME where there is one."""
    package = name.rsplit('.', 1)[0]
    known = modules()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                submodule = f'{module}.{alias.name}'
                inner = submodule in known or submodule + '.__init__' in known
                yield node.lineno, submodule if inner else module


def stdlib(name):
    return name.split('.')[0] in sys.stdlib_module_names


@pytest.mark.parametrize('name, path', sorted(modules().items()), ids=sorted(modules()))
def test_imports_point_one_way(name, path):
    importer = kind(name)
    wrong = [f'line {line}: {imported} ({kind(imported)})'
             for line, imported in imports(name, path)
             if not stdlib(imported) and kind(imported) not in ALLOWED[importer]]
    assert wrong == [], f'{name} ({importer}) may import only {sorted(ALLOWED[importer])}'


def test_the_table_catches_an_import_against_the_direction(tmp_path):
    """The check itself: an import of the app from the server, even inside a function, is found."""
    module = tmp_path / 'probe.py'
    module.write_text('def late():\n    from xend_rest.api.app import make_app\n')
    found = [imported for _, imported in imports('xend_rest.server.probe', module)]
    assert found == ['xend_rest.api.app']
    assert kind(found[0]) not in ALLOWED[kind('xend_rest.server.probe')]


@pytest.mark.parametrize('layer', sorted(str(path.parent.relative_to(PACKAGE))
                                          for path in PACKAGE.rglob('__init__.py')
                                          if path.parent != PACKAGE))
def test_a_subpackage_imports_nothing_at_its_door(layer):
    """Each __init__.py is its docstring alone: importing a package loads none of its modules
    (the console machinery stays unloaded until a console is opened)."""
    body = ast.parse((PACKAGE / layer / '__init__.py').read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value.value, str)
    assert 'import' in body[0].value.value  # it says what the layer may import


def loaded_by(code):
    """The modules a fresh interpreter has loaded after running code, from this checkout."""
    result = subprocess.run([sys.executable, '-c', code + '\nimport sys; print(*sorted(sys.modules))'],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_the_server_runs_without_libvirt():
    """Every module of the server, and a Server serving a WSGI app of its own, load no libvirt and
    nothing of the application, the hypervisor layer or the consoles."""
    server = sorted(name for name in modules() if name.startswith('xend_rest.server.'))
    loaded = loaded_by('\n'.join(f'import {name.removesuffix(".__init__")}' for name in server) + '''
from xend_rest.server.serving import Server
Server(lambda environ, start_response: [], ['127.0.0.1:0'], workers=1)''')
    assert 'xend_rest.server.serving' in loaded
    assert 'libvirt' not in loaded and 'libvirtmod' not in loaded
    assert not {name for name in loaded if name.startswith(('xend_rest.api', 'xend_rest.hypervisor',
                                                            'xend_rest.consoles'))}


def test_the_import_paths_kept_for_embedders(node_uri):
    """docs/operations.md: xend_rest.connection and xend_rest.sessions re-export from the new
    homes; xend_rest.make_app and xend_rest.wsgi:application are where they were."""
    from xend_rest import connection, make_app, sessions
    from xend_rest.hypervisor.libvirt_connection import SharedConnection
    from xend_rest.server.upgrades import Upgrade
    assert connection.SharedConnection is SharedConnection and sessions.Upgrade is Upgrade
    api = Client(make_app(connection=connection.SharedConnection(node_uri, open_timeout=5)))
    try:
        assert api.get('/libvirt/xen/nodes/web/json').status == 200
    finally:
        api.app.close()
    result = subprocess.run([sys.executable, '-c', 'from xend_rest.wsgi import application\n'
                             'print(type(application).__module__)'], cwd=ROOT, text=True,
                            env=dict(os.environ, XEND_REST_URI=node_uri), capture_output=True,
                            check=True)
    assert result.stdout.split() == ['xend_rest.api.app']


def test_no_module_is_left_outside_the_layers():
    """Every module is a layer's, a neutral one, one on top, or a kept alias: a new one at the
    top of the package has to say which (the table above)."""
    top_level = {name for name in modules() if name.count('.') == 1}
    assert top_level <= NEUTRAL | TOP | set(ALIASES)
    # every folder is a layer, or a room of one (api/handlers, hypervisor/moves)
    assert {path.relative_to(PACKAGE).parts[0] for path in PACKAGE.rglob('*.py')
            if path.parent != PACKAGE} == set(LAYERS)
    assert os.path.isfile(PACKAGE / 'demo-node.xml')
