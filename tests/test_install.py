"""What an installation holds: `pip install .` and the .deb of packaging/build-deb each ship every
module of every subpackage and the demo's node file (nothing setup.cfg or build-deb misses slips
through), and serve --demo from where they were installed, away from this checkout."""
import http.client
import json
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


@pytest.fixture(scope='module')
def deb_root(tmp_path_factory):
    """The .deb of packaging/build-deb, unpacked: its files and its maintainer scripts."""
    tmp = tmp_path_factory.mktemp('deb')
    deb = subprocess.run([str(ROOT / 'packaging' / 'build-deb'), str(tmp / 'dist')],
                         capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(['dpkg-deb', '-x', deb, str(tmp / 'root')], check=True)
    subprocess.run(['dpkg-deb', '-e', deb, str(tmp / 'root' / 'DEBIAN')], check=True)
    return tmp / 'root'


def systemd_252(bin_dir, path, argv):
    """What systemd 252 answers for a unit whose ExecStart= runs `argv` (there is no systemd on
    this test machine; tests/xen has a real one): `systemctl show -P ExecStart` joins the words
    with spaces, unquoted (systemctl-show.c: strv_join(argv, " ")); busctl --json gives the
    D-Bus property a(sasbttttuii), structs and arrays as JSON arrays."""
    shown = (f"{{ path={path} ; argv[]={' '.join(argv)} ; ignore_errors=no ; start_time=[n/a] ; "
             "stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }")
    answers = {'systemctl': shown + '\n', 'busctl': json.dumps(
        {'type': 'a(sasbttttuii)', 'data': [[path, argv, False, 0, 0, 0, 0, 0, 0, 0]]}) + '\n'}
    bin_dir.mkdir(exist_ok=True)
    for name, answer in answers.items():
        (bin_dir / f'{name}.answer').write_text(answer)
        (bin_dir / name).write_text(f'#!/bin/sh\nexec cat {bin_dir / name}.answer\n')
        (bin_dir / name).chmod(0o755)


@pytest.mark.skipif(shutil.which('dpkg-deb') is None, reason='needs dpkg-deb')
@pytest.mark.parametrize('bad', [False, True])
def test_the_postinst_checks_the_configuration_with_the_units_words_as_they_are(deb_root,
                                                                               tmp_path, bad):
    """An upgrade's check runs the unit's command line word for word: a configuration file
    whose path has a space, a list of paths in one argument, a `*` that no shell expands. With a
    problem in that file, the check names it (it was read); without, it passes."""
    conf_dir = tmp_path / 'my conf'
    conf_dir.mkdir()
    (conf_dir / 'xend-rest.conf').write_text('[xend-rest]\n' + ('no-such-key = 1\n' * bad))
    (tmp_path / '*').mkdir()  # a glob would find it
    site = deb_root / 'usr' / 'lib' / 'python3' / 'dist-packages'
    argv = [sys.executable, str(deb_root / 'usr' / 'bin' / 'xend-rest'),
            '--config', str(conf_dir / 'xend-rest.conf'), '--allowed-paths', '/srv/a /srv/b',
            '--allowed-hosts', '*']
    systemd_252(tmp_path / 'bin', sys.executable, argv)
    postinst = (deb_root / 'DEBIAN' / 'postinst').read_text()
    check_config = postinst[postinst.index('check_config() {'):]
    check_config = check_config[:check_config.index('\n}\n') + 3]
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
               PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE='1')
    env.pop('XEND_REST_URI', None)
    checked = subprocess.run(['sh', '-c', f'unit=xend-rest.service\n{check_config}check_config'],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    if bad:
        assert checked.returncode == 2, checked
        [line] = checked.stderr.splitlines()
        assert line.endswith(f"{conf_dir / 'xend-rest.conf'}: unknown key(s) in [xend-rest]: "
                             'no-such-key'), checked
    else:
        assert (checked.returncode, checked.stdout, checked.stderr) == (0, '', ''), checked
