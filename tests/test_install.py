"""What an installation holds: `pip install .` and the .deb of packaging/build-deb each ship every
module of every subpackage and the demo's node file (nothing setup.cfg or build-deb misses slips
through), and serve --demo from where they were installed, away from this checkout."""
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'xend_rest'


def shipped(site):
    """The package's modules and data files under an installation's site directory."""
    return {path.relative_to(site) for path in (site / 'xend_rest').rglob('*')
            if path.suffix in ('.py', '.xml') and '__pycache__' not in path.parts}


def free_port():
    with socket.create_server(('127.0.0.1', 0)) as sock:
        return sock.getsockname()[1]


def serves_the_demo(site, command, cwd):
    """Every module imports from `site` alone, and `command --demo` answers /_ping."""
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE='1')
    env.pop('XEND_REST_URI', None)
    modules = sorted('.'.join(path.with_suffix('').parts).removesuffix('.__init__')
                     for path in shipped(site) if path.suffix == '.py'
                     and path.name != '__main__.py')
    code = ''.join(f'import {name}\n' for name in modules) + 'print(xend_rest.__file__)'
    found = subprocess.run([sys.executable, '-c', code], cwd=cwd, env=env, capture_output=True,
                           text=True, check=True).stdout
    assert found.strip() == str(site / 'xend_rest' / '__init__.py')
    port = free_port()
    daemon = subprocess.Popen([*command, '--demo', '--listen', f'127.0.0.1:{port}'], cwd=cwd,
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            try:
                conn = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
                conn.request('GET', '/_ping')
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, b'OK')
                break
            except ConnectionRefusedError:
                assert daemon.poll() is None, daemon.stderr.read()
                time.sleep(0.05)
        else:
            raise AssertionError('the installed daemon did not listen')
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    assert str(site / 'xend_rest' / 'demo-node.xml') in daemon.stderr.read()


def test_pip_install_ships_every_module_and_serves(tmp_path):
    source = tmp_path / 'source'  # a copy: pip builds in place, and leaves build/ behind
    shutil.copytree(PACKAGE, source / 'xend_rest', ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('setup.cfg', 'pyproject.toml', 'README.md'):
        shutil.copy(ROOT / name, source)
    site = tmp_path / 'site'
    built = subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
                            '--target', str(site), str(source)], capture_output=True, text=True)
    if built.returncode and 'No matching distribution' in built.stderr:
        pytest.skip('pip cannot fetch setuptools to build with: ' + built.stderr.strip())
    assert built.returncode == 0, built.stderr
    assert shipped(site) == shipped(ROOT)
    serves_the_demo(site, [str(site / 'bin' / 'xend-rest')], tmp_path)


@pytest.mark.skipif(shutil.which('dpkg-deb') is None, reason='needs dpkg-deb')
def test_the_deb_ships_every_module_and_serves(tmp_path):
    deb = subprocess.run([str(ROOT / 'packaging' / 'build-deb'), str(tmp_path / 'dist')],
                         capture_output=True, text=True, check=True).stdout.strip()
    root = tmp_path / 'root'
    subprocess.run(['dpkg-deb', '-x', deb, str(root)], check=True)
    site = root / 'usr' / 'lib' / 'python3' / 'dist-packages'
    assert shipped(site) == shipped(ROOT)
    # Its /usr/bin/xend-rest, with this interpreter rather than the system's python3.
    serves_the_demo(site, [sys.executable, str(root / 'usr' / 'bin' / 'xend-rest')], tmp_path)
