"""A configuration error: exit status 2 (the unit's RestartPreventExitStatus=), one log line per
problem and no usage text; `--check-config` judges everything a start judges, and prints only
the problems."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = 't' * 32


def run(*args):
    env = dict(os.environ)
    env.pop('XEND_REST_URI', None)
    return subprocess.run([sys.executable, 'xend_rest.py', *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)


def tokens(tmp_path, text=f'{TOKEN} admin ops\n', mode=0o600):
    path = tmp_path / 'tokens'
    path.write_text(text)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize('conf, error', [
    ('[xend-rest]\nno-such-key = 1\n', 'unknown key(s) in [xend-rest]: no-such-key'),
    ('[xend-rest]\nworkers = many\n', 'workers: expected a positive number'),
    ('not an ini file\n', 'cannot read configuration file'),
])
def test_a_bad_file_is_one_error_line_and_status_2(tmp_path, conf, error):
    path = tmp_path / 'xend-rest.conf'
    path.write_text(conf)
    result = run('--config', str(path), '--listen', '127.0.0.1:0')
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and error in lines[0] and 'refusing to start' in lines[0], lines
    assert 'ERROR' in lines[0] and 'usage:' not in result.stderr


def test_a_bad_flag_is_one_error_line_too():
    result = run('--workers', '0')
    assert result.returncode == 2
    assert result.stderr.count('\n') == 1 and 'argument --workers' in result.stderr
    assert 'usage:' not in result.stderr


def test_check_config_prints_nothing_for_a_good_configuration(tmp_path):
    path = tmp_path / 'xend-rest.conf'
    path.write_text(f'[xend-rest]\nuri = test:///default\nlisten = 127.0.0.1:0\n'
                    f'tokens-file = {tokens(tmp_path)}\nlog-level = debug\n')
    result = run('--config', str(path), '--check-config')
    assert (result.returncode, result.stdout, result.stderr) == (0, '', '')


def test_check_config_names_every_problem_once(tmp_path):
    """Each problem a start would refuse, one line each, in one run: the tokens file, the TLS
    files, the socket group; nothing is bound or opened."""
    result = run('--check-config', '--listen', '127.0.0.1:0',
                 '--tokens-file', tokens(tmp_path, mode=0o644),
                 '--tls-cert', str(tmp_path / 'absent.pem'),
                 '--socket-group', 'no-such-group-x')
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3, lines
    assert 'chmod 600' in lines[0]
    assert 'cannot load TLS certificate' in lines[1]
    assert "no such group 'no-such-group-x'" in lines[2]


def test_check_config_sees_a_token_limited_to_an_unknown_connection(tmp_path):
    result = run('--check-config', '--connect', 'dom0-a=test:///default',
                 '--tokens-file', tokens(tmp_path, f'{TOKEN} read@dom0-c\n'))
    assert result.returncode == 2
    assert 'limited to dom0-c, which is not a configured connection' in result.stderr


def test_check_config_refuses_an_exposed_listener_as_a_start_would():
    result = run('--check-config', '--listen', '0.0.0.0:8000')
    assert result.returncode == 2 and '--insecure' in result.stderr
    assert run('--check-config', '--listen', '0.0.0.0:8000', '--insecure').returncode == 0


def test_check_config_reports_a_file_error_as_a_start_would(tmp_path):
    path = tmp_path / 'xend-rest.conf'
    path.write_text('[xend-rest]\ncolour = blue\n')
    result = run('--config', str(path), '--check-config')
    assert result.returncode == 2
    assert result.stderr.count('\n') == 1 and 'unknown key(s)' in result.stderr


@pytest.mark.parametrize('name', ['tokens', 'config'])
def test_a_file_that_is_not_utf8_is_a_configuration_error_not_a_traceback(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(f'{TOKEN} admin caf\xe9\n'.encode('latin-1') if name == 'tokens'
                     else b'[xend-rest]\nlog-level = d\xe9bug\n')
    path.chmod(0o600)
    flag = '--tokens-file' if name == 'tokens' else '--config'
    for args in ([], ['--check-config']):
        result = run('--uri', 'test:///default', '--listen', '127.0.0.1:0', flag, str(path),
                     *args)
        assert result.returncode == 2, result.stderr
        assert 'Traceback' not in result.stderr and 'utf-8' in result.stderr.lower()


def test_a_tokens_file_open_to_others_is_refused_before_it_is_read():
    result = run('--uri', 'test:///default', '--tokens-file', '/dev/zero', '--check-config')
    assert result.returncode == 2 and 'accessible to group or others' in result.stderr
