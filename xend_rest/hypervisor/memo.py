"""What the daemon derives from each domain's XML, kept per domain so that it scales with them."""
import threading

MINIMUM_BOUND = 1024


class DomainMemo:
    """Values derived from a domain's XML (its JSON, its device names), one entry per domain UUID,
    each kept with the XML it came from.

    The caller fetches the XML afresh every time and the memo compares it with the kept one, so a
    changed domain is recomputed, never served stale; and as there is one entry per domain, a List
    of every domain evicts nothing it needs. A complete listing drops the entries of the domains
    that are gone; without one, the memo stays bounded all the same: past twice the longest
    listing expected (and at least MINIMUM_BOUND), its oldest entries go.
    """

    def __init__(self, minimum=MINIMUM_BOUND):
        # uuid -> (xml, {derive: derive(xml)}); a get or a set is one dict operation, safe across
        # threads; the lock serialises only the sweeps.
        self._entries = {}
        self._bound = minimum
        self._lock = threading.Lock()

    def get(self, uuid, xml, derive):
        """derive(xml), from the memo when it was derived from this very XML of this domain."""
        entry = self._entries.get(uuid)
        if entry is None or entry[0] != xml:
            entry = (xml, {})
            self._entries.pop(uuid, None)  # re-inserted last: the entries stay oldest first
            self._entries[uuid] = entry
            if len(self._entries) > self._bound:
                self._drop_oldest()
        values = entry[1]
        try:
            return values[derive]
        except KeyError:
            value = values[derive] = derive(xml)
            return value

    def expect(self, count):
        """A listing of `count` domains is about to be read: make room for every one of them."""
        self._bound = max(self._bound, 2 * count)

    def listed(self, uuids, complete):
        """Say which domains a listing found (a set); a complete one (every domain defined, not
        only the running ones) drops the entries of every other domain: they are gone."""
        if complete:
            with self._lock:
                # list() copies the keys in one step; iterating the dict itself would fail
                # if another thread added an entry meanwhile.
                for uuid in list(self._entries):
                    if uuid not in uuids:
                        self._entries.pop(uuid, None)

    def clear(self):
        self._entries.clear()

    def __len__(self):
        return len(self._entries)

    def _drop_oldest(self):
        with self._lock:
            oldest = list(self._entries)[:len(self._entries) - self._bound // 2]
            for uuid in oldest:
                self._entries.pop(uuid, None)
