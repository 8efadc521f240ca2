"""Maintenance of a host: while it is on, the daemon starts no guest there (and migrates none to
it). With a state directory it survives a restart of the daemon (a file per connection);
virsh, xl and libvirt's autostart know nothing of it."""
import json
import logging
import os
import threading
from datetime import datetime, timezone

import libvirt

from xend_rest import defaults
from xend_rest.errors import HTTPError
from xend_rest.logtext import printable_text

log = logging.getLogger(__name__)


def in_maintenance(name, state):
    return HTTPError(409, f"connection {name} is in maintenance (since {state['Since']}, by "
                     f"{state['Caller']}): lift it first", 'in_maintenance')


def refuse_on_host(hypervisors, hypervisor):
    """409 while `hypervisor`'s host is in maintenance, entered through any connection to it;
    named as the request named it (the credentials may not cover the connection it was entered
    through: docs/security.md)."""
    for other in hosts_entries(hypervisors, hypervisor):
        state = other.maintenance.state
        if state is not None:
            raise in_maintenance(hypervisor.name, state)


def hosts_entries(hypervisors, hypervisor, known=False):
    """The connections to `hypervisor`'s host through which its maintenance was entered (it
    first, if it was). Hosts as last known; one never known is asked for LISTING_WAIT at most
    (known: not at all, for a listing): a host in maintenance is often one that is down, and
    its connection's open timeout must not hold every other request."""
    wait = 0 if known else defaults.LISTING_WAIT
    others = [other for other in hypervisors if other is not hypervisor and other.maintenance.on]
    mine = _known_host(hypervisor, wait) if others else None
    return ([hypervisor] if hypervisor.maintenance.on else []) + [
        other for other in others if mine is not None and _known_host(other, wait) == mine]


def _known_host(hypervisor, wait):
    """Hypervisor.host() as last known; never known, asked on a thread for `wait` s at most
    (learn_facts: one question out per connection, however many requests ask)."""
    if hypervisor.known_host is None and wait:
        asking = threading.Thread(target=_learn, args=(hypervisor,), daemon=True,
                                  name=f'ask-{hypervisor.name}')
        asking.start()
        asking.join(wait)
    return hypervisor.known_host


def _learn(hypervisor):
    try:
        hypervisor.learn_facts()
    except (HTTPError, libvirt.libvirtError):
        pass  # not answering: its host stays unknown until it does


def host_state(hypervisors, hypervisor, known=False):
    """The maintenance of `hypervisor`'s host, {"Since", "Caller"} or None: the same through
    every connection to it."""
    entries = hosts_entries(hypervisors, hypervisor, known)
    return entries[0].maintenance.state if entries else None


class Maintenance:
    """One connection's maintenance: None, or {"Since", "Caller"}; kept in `path` if given."""

    def __init__(self, path=None):
        self.path = path
        self._lock = threading.Lock()
        # held while an evacuation enters maintenance and starts, and while it is lifted: a
        # refused evacuation undoes only its own entry, and no lift comes in between
        self.changing = threading.Lock()
        self.state = self._load()

    @property
    def on(self):
        return self.state is not None

    def enter(self, caller):
        """Put the host into maintenance (again: it stays as it was); the state."""
        with self._lock:
            if self.state is None:
                state = {'Since': datetime.now(timezone.utc).isoformat(timespec='seconds')
                         .replace('+00:00', 'Z'), 'Caller': caller}
                self._store(state)
                self.state = state
            return self.state

    def lift(self):
        with self._lock:
            if self.state is not None:
                self._store(None)
                self.state = None

    def _load(self):
        if self.path is None:
            return None
        try:
            with open(self.path, encoding='utf-8') as f:
                state = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:  # unreadable: on, so that nothing starts there
            return self._untrusted(err)
        # Read as untrusted: what we write is {"Since", "Caller"}, strings; anything else (a
        # hand-edited {"Maintenance": false} too) is on, as unreadable, never a 500.
        if not (isinstance(state, dict) and set(state) == {'Since', 'Caller'} and all(
                isinstance(value, str) for value in state.values())):
            return self._untrusted('not {"Since": "…", "Caller": "…"}')
        return state

    def _untrusted(self, why):
        log.warning('maintenance file %s is unreadable (%s): the connection stays in '
                    'maintenance until it is lifted', printable_text(self.path),
                    printable_text(why))
        return {'Since': None, 'Caller': None}

    def _store(self, state):
        """Write (or remove) the file first: what a restart reads is what was answered."""
        if self.path is None:
            return
        try:
            if state is None:
                os.unlink(self.path)
                return
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            part = self.path + '.part'
            with open(part, 'w', encoding='utf-8') as f:
                json.dump(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, self.path)
        except FileNotFoundError:
            pass  # lifted already (by another process sharing the directory)
        except OSError as err:
            raise HTTPError(500, f'cannot record the maintenance in the state directory: {err}',
                            'state_unwritable') from None
