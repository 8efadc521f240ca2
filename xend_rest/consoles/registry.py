"""The console and screen sessions of an app: how many may be open, in all and by one caller (429
past either), which session holds which console (for force=1 takeovers), and the bytes they
moved (for /metrics)."""
# The session machinery (bridge, framing, websocket) is imported by the first session, not at
# start: most daemons never open one.
import threading
import time

from xend_rest import defaults
from xend_rest.errors import HTTPError

UNSTARTED = 60.0  # seconds after which a session the server never ran is given up


class Bridges:
    """The sessions of one app: how many may be open, which holds which console, and the bytes
    they moved (for /metrics)."""

    def __init__(self, max_sessions=defaults.CONSOLE_SESSIONS, idle_timeout=defaults.CONSOLE_IDLE,
                 buffer_size=defaults.CONSOLE_BUFFER, max_message=defaults.CONSOLE_MESSAGE,
                 per_owner=defaults.CONSOLE_SESSIONS_PER_CALLER):
        self.max_sessions, self.idle_timeout, self.per_owner = max_sessions, idle_timeout, per_owner
        self.buffer_size, self.max_message = buffer_size, max_message
        self.bytes_in = self.bytes_out = 0  # of the sessions that ended
        self._sessions = set()  # Bridge, and Place while a guest side is being opened
        self._holders = {}  # console key -> the session holding it
        self._lock = threading.Condition()

    def __len__(self):
        with self._lock:
            return len(self._sessions)

    def framing(self, over_websocket):
        from .framing import RawFraming, WebSocketFraming
        return WebSocketFraming(self.max_message) if over_websocket else RawFraming()

    def admit(self, key=None, take_over=False, owner=None):
        """A Place under the session limits (429 past the daemon's, or past `owner`'s share) while
        a guest side is opened; with take_over, the session holding `key` is told it is being
        taken over."""
        self._give_up_unstarted()
        with self._lock:
            if owner is not None and sum(s.owner == owner
                                         for s in self._sessions) >= self.per_owner:
                raise HTTPError(429, f'{owner} has {self.per_owner} console sessions open, the '
                                'most one caller may (console-sessions-per-caller)',
                                'too_many_sessions_for_caller', [('Retry-After', '5')])
            if len(self._sessions) >= self.max_sessions:
                raise HTTPError(429, f'{self.max_sessions} console sessions are open, the most '
                                'this daemon allows', 'too_many_sessions', [('Retry-After', '5')])
            place = Place(key, self._holders.get(key) if take_over and key else None, owner)
            self._sessions.add(place)
        if place.holder is not None:
            place.holder.guest.taken_over = True
        return place

    def cancel(self, place):
        """The guest side could not be opened: the place is free again."""
        if place.holder is not None:
            place.holder.guest.taken_over = False
        with self._lock:
            self._sessions.discard(place)
            self._lock.notify_all()

    def start(self, place, guest, framing, label):
        """The Bridge for an opened guest side, in the place admit() gave (given back, and the
        guest side closed, if the Bridge cannot be made)."""
        from .bridge import Bridge
        try:
            session = Bridge(self, guest, framing, place.key, label)
        except BaseException:
            try:
                guest.close()
            finally:
                self.cancel(place)
            raise
        session.owner = place.owner
        with self._lock:
            self._sessions.discard(place)
            self._sessions.add(session)
            if place.key:
                self._holders[place.key] = session
        if place.holder is not None:
            place.holder.end('taken_over')
        return session

    def release(self, session):
        """A session ended: its place and its console are free, its bytes counted."""
        with self._lock:
            self._sessions.discard(session)
            if session.key and self._holders.get(session.key) is session:
                del self._holders[session.key]
            self.bytes_in += session.bytes_in
            self.bytes_out += session.bytes_out
            self._lock.notify_all()

    def _give_up_unstarted(self):
        """Sessions the server never ran (the 101 could not be sent) hold a stream: free them."""
        now = time.monotonic()
        with self._lock:
            stale = [s for s in self._bridges() if s.started is None and now - s.created > UNSTARTED]
        for session in stale:
            session.discard()

    def totals(self):
        """(open sessions, bytes in, bytes out), the open sessions' bytes included."""
        with self._lock:
            sessions = self._bridges()
            return (len(self._sessions), self.bytes_in + sum(s.bytes_in for s in sessions),
                    self.bytes_out + sum(s.bytes_out for s in sessions))

    def end_where(self, condition, key):
        """End the running sessions for which condition(session) holds, with an ENDINGS key of
        bridge.py; how many."""
        with self._lock:
            ending = [s for s in self._bridges() if condition(s)]
        for session in ending:
            session.end(key)
        return len(ending)

    def close_all(self, timeout=defaults.CONSOLE_CLOSE_WAIT + 1):
        """At shutdown: every session says 1001 and ends; wait up to timeout for them."""
        with self._lock:
            sessions = self._bridges()
        for session in sessions:
            if session.started is None:
                session.discard()
            else:
                session.end('shutdown')
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._sessions and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            return not self._sessions

    def _bridges(self):
        """The sessions that run (under _lock): not the places of guest sides being opened."""
        return [s for s in self._sessions if not isinstance(s, Place)]


class Place:
    """A place under the limit, taken while a guest side is being opened."""

    def __init__(self, key, holder, owner=None):
        self.key, self.holder, self.owner = key, holder, owner
