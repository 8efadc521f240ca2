"""Reloads (SIGHUP) made synchronous: the daemon's reply file, which `xend-rest --reload PID` (the
unit's ExecReload=) waits for, since systemd 252 has no Type=notify-reload.

The file, `reload` in $RUNTIME_DIRECTORY (the unit's RuntimeDirectory=), is one line
'PID N STATE MESSAGE': the daemon's PID, the number of its latest reload, which it takes when it
begins, and `reloading`, `done` or `refused` (the reason follows). The waiter reads N before it
sends its signal, then waits for a later N that is over. Race-free: a reload numbered past what
the waiter read wrote `reloading` after that read, and reads the files only after writing it,
so it sees whatever was changed before `systemctl reload` ran.
"""
import logging
import os
import signal
import time

log = logging.getLogger(__name__)

NAME = 'reload'
RELOADING, DONE, REFUSED = 'reloading', 'done', 'refused'
POLL = 0.05  # seconds between looks at the reply


def reply_path():
    """The reply file, None where there is no $RUNTIME_DIRECTORY (not under systemd)."""
    directory = os.environ.get('RUNTIME_DIRECTORY', '').split(':')[0]
    return os.path.join(directory, NAME) if directory else None


def write_reply(pid, number, state, message=''):
    """Replace the reply at once (a rename): a reader never sees half a line."""
    path = reply_path()
    if path is None:
        return
    temporary = f'{path}.{pid}'
    try:
        with open(temporary, 'w') as f:
            f.write(f"{pid} {number} {state} {' '.join(message.split())}\n")
        os.replace(temporary, path)
    except OSError as err:
        log.warning('cannot answer the reload in %s: %s', path, err)


def read_reply(path, pid):
    """(number, state, message) of `pid`'s latest reload: (0, DONE, '') before its first."""
    try:
        with open(path) as f:
            fields = f.read().split(' ', 3)
    except FileNotFoundError:
        return 0, DONE, ''
    if len(fields) < 3 or fields[0] != str(pid) or not fields[1].isdigit():
        return 0, DONE, ''  # an earlier daemon's
    return int(fields[1]), fields[2].strip(), fields[3].strip() if len(fields) > 3 else ''


def is_daemon(pid):
    """Whether process `pid` runs xend-rest (its command line names it), as the unit's
    $MAINPID does."""
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            words = f.read().split(b'\0')
    except OSError:
        return False
    return any(b'xend-rest' in word or b'xend_rest' in word for word in words)


def reload_and_wait(pid, timeout):
    """Send SIGHUP to `pid` and wait for the reload it asks for: (state, message), state DONE
    or REFUSED; RuntimeError when there is no reply file or no answer within `timeout` s."""
    path = reply_path()
    if path is None:
        raise RuntimeError('no $RUNTIME_DIRECTORY, where the daemon answers (the unit\'s '
                           'RuntimeDirectory=): send it SIGHUP instead, and read its log')
    if not is_daemon(pid):  # SIGHUP ends most other programs
        raise RuntimeError(f'process {pid} is not a xend-rest daemon: nothing was sent')
    before = read_reply(path, pid)[0]
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        number, state, message = read_reply(path, pid)
        if number > before and state != RELOADING:
            return state, message
        time.sleep(POLL)
    raise RuntimeError(f'process {pid} did not answer the reload within {timeout:g} s')
