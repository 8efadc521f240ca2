"""Console tickets: short-lived, single-use credentials that a browser's WebSocket can carry.

A browser's WebSocket always sends Origin and cannot send Authorization. So a caller with the
role asks for a ticket (POST .../console/ticket) and hands it to the page, which passes it as
?ticket=; the ticket is bound to the hypervisor connection, the domain, the route and the role
of the caller who asked for it, and works once, within `lifetime` seconds (as Proxmox's
vncticket does). Whoever opens it is that caller, for the access log and the limits. Tickets
live in memory: a restart forgets them, which costs a page a retry.
"""
import secrets
import threading
import time
from collections import namedtuple
from urllib.parse import unquote_plus

from . import defaults
from .errors import HTTPError

LIFETIME = 30  # seconds a ticket is good for: enough to hand it to a page and open the socket
MAX_TICKETS = 1024  # outstanding at once; each is a few hundred bytes
PARAMETER = 'ticket'

Ticket = namedtuple('Ticket', 'hypervisor uuid handler role caller expires')


def redact_ticket(target):
    """A request target fit for a log: a ticket is a credential, never written down. The query
    is read as the app reads it (urllib.parse.parse_qs: fields split at '&', names decoded), so
    '?%74icket=T' is a ticket here too; its value becomes '-', its name stays as sent."""
    path, question, query = target.partition('?')
    if not question:
        return target
    fields = query.split('&')
    for index, field in enumerate(fields):
        name, equals, _value = field.partition('=')
        if equals and unquote_plus(name, errors='replace') == PARAMETER:
            fields[index] = name + '=-'
    return f"{path}?{'&'.join(fields)}"


class Tickets:
    """The outstanding tickets of one guard."""

    def __init__(self, lifetime=LIFETIME, max_tickets=MAX_TICKETS,
                 per_caller=defaults.CONSOLE_TICKETS_PER_CALLER):
        """per_caller: tickets one caller may have outstanding, so that it cannot take them all."""
        self.lifetime, self.max_tickets, self.per_caller = lifetime, max_tickets, per_caller
        self._tickets = {}  # token -> Ticket
        self._lock = threading.Lock()

    def issue(self, hypervisor, uuid, handler, role, caller):
        """A new ticket's token for the route served by `handler`, on one domain, with `role`,
        asked for by `caller` (429 past its share, or past `max_tickets` in all)."""
        token = secrets.token_urlsafe(24)
        now = time.monotonic()
        retry = [('Retry-After', str(int(self.lifetime)))]
        with self._lock:
            self._sweep(now)
            if sum(ticket.caller == caller for ticket in self._tickets.values()) >= self.per_caller:
                raise HTTPError(429, f'{caller} has {self.per_caller} console tickets outstanding, '
                                'the most one caller may (console-tickets-per-caller); they '
                                f'expire within {self.lifetime:g} s', 'too_many_tickets_for_caller',
                                retry)
            if len(self._tickets) >= self.max_tickets:
                raise HTTPError(429, f'{len(self._tickets)} console tickets are outstanding; they '
                                f'expire within {self.lifetime:g} s', 'too_many_tickets', retry)
            self._tickets[token] = Ticket(hypervisor, uuid, handler, role, caller,
                                         now + self.lifetime)
        return token

    def redeem(self, token):
        """The ticket a token names, taken out (it works once); None if unknown or expired."""
        with self._lock:
            ticket = self._tickets.pop(token, None)
        if ticket is None or ticket.expires < time.monotonic():
            return None
        return ticket

    def __len__(self):
        with self._lock:
            self._sweep(time.monotonic())
            return len(self._tickets)

    def _sweep(self, now):
        for token in [token for token, ticket in self._tickets.items() if ticket.expires < now]:
            del self._tickets[token]
