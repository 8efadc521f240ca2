"""Console tickets: short-lived, single-use credentials that a browser's WebSocket can carry.

A browser's WebSocket always sends Origin and cannot send Authorization. So a caller with the
role asks for a ticket (POST .../console/ticket) and hands it to the page, which passes it as
?ticket=; the ticket is bound to the hypervisor connection, the domain, the route and the role
of the caller who asked for it, and works once, within `lifetime` seconds (as Proxmox's
vncticket does). Whoever opens it is that caller, for the access log and the limits. Tickets
live in memory: a restart forgets them, which costs a page a retry.

The secret is the value: a ticket found anywhere in a request's target, however spelled, is
spent (Tickets.spend_in), and no log shows it (Tickets.hide). See docs/consoles.md.
"""
import re
import secrets
import threading
import time
from collections import namedtuple
from urllib.parse import quote, unquote, unquote_plus

from xend_rest import defaults
from xend_rest.errors import HTTPError

LIFETIME = 30  # seconds a ticket is good for: enough to hand it to a page and open the socket
MAX_TICKETS = 1024  # outstanding at once; each is a few hundred bytes
PARAMETER = 'ticket'

# credential: the asker's, (kind, token or CN, role) or None: Guard.still_grants
Ticket = namedtuple('Ticket', 'hypervisor uuid handler role caller expires credential',
                    defaults=(None,))


# Where a log may name a ticket's parameter: fields split at '/' and ';' in a path (its
# parameters), at '&' and ';' in a query (parse_qs reads '&' only; other readers ';' too).
PATH_FIELDS, QUERY_FIELDS = re.compile(r'([/;])'), re.compile(r'([&;])')
TOKEN = re.compile(r'[A-Za-z0-9_-]+')  # a ticket is one run of token_urlsafe's alphabet
IGNORED_IN_NAMES = re.compile(r'[\x00-\x20\x7f]+')  # spaces (and '+'), NULs, controls
# What a target holds if any of its names may read as 'ticket' (_loose): its letters, or an
# escape or a character _loose drops between them.
MAY_NAME_TICKET = re.compile(r'icket|[%+\x00-\x20\x7f]', re.IGNORECASE)


def target_of(environ):
    """The request target as sent: RAW_URI or REQUEST_URI where the server gives it, else
    rebuilt from PATH_INFO (decoded, PEP 3333's latin-1) and QUERY_STRING."""
    target = environ.get('RAW_URI') or environ.get('REQUEST_URI')
    if target:
        return target
    path, query = environ.get('PATH_INFO', ''), environ.get('QUERY_STRING')
    try:
        raw = path.encode('latin-1')
    except UnicodeEncodeError:  # not PEP 3333's: taken as text
        raw = path.encode('utf-8', 'surrogatepass')
    path = quote(raw, safe="/;=&+:@!$'()*,~")
    return f'{path}?{query}' if query else path


def tokens_in(text):
    """Every value in text that could be a ticket, however it is spelled around it: each run of
    the tickets' alphabet, in text as sent and percent-decoded."""
    tokens = set(TOKEN.findall(text))
    if '%' in text:
        tokens.update(TOKEN.findall(unquote(text, errors='replace')))
    return tokens


def redact_ticket(target, is_ticket=None):
    """A request target fit for a log: a ticket is a credential, never written down.

    The target is cut into fields (PATH_FIELDS, QUERY_FIELDS), each 'name=value' or a bare
    value. A field's value becomes '-' when its name, read loosely (percent-decoded, '+' and
    spaces, NULs and other controls dropped, any case), is 'ticket': so '?%74icket=T',
    '?TICKET=T', '?ticket+=T', '?x=1;ticket=T' and '/console;ticket=T' are all hidden. And
    whatever the names, a field's value (or the whole field) holding a run that is_ticket(run)
    says is a ticket (one outstanding or just spent) becomes '-' too."""
    if is_ticket is not None and not any(map(is_ticket, tokens_in(target))):
        is_ticket = None  # none here: only names are looked at
    if is_ticket is None and ('=' not in target or not MAY_NAME_TICKET.search(target)):
        return target  # the usual request: no field can be a ticket's
    path, question, query = target.partition('?')
    path = _redact_fields(path, PATH_FIELDS, is_ticket)
    return path + question + _redact_fields(query, QUERY_FIELDS, is_ticket) if question else path


def _redact_fields(text, separators, is_ticket):
    parts = separators.split(text)  # fields, with the separators between them
    for index in range(0, len(parts), 2):
        name, equals, _value = parts[index].partition('=')
        if equals and _loose(name) == PARAMETER:
            parts[index] = name + '=-'
        elif is_ticket is not None and any(map(is_ticket, tokens_in(parts[index]))):
            carried = any(map(is_ticket, tokens_in(name)))
            parts[index] = '-' if carried or not equals else name + '=-'
    return ''.join(parts)


def _loose(name):
    """A parameter's name as a lenient reader might take it."""
    return IGNORED_IN_NAMES.sub('', unquote_plus(name, errors='replace')).casefold()


class Tickets:
    """The outstanding tickets of one guard."""

    def __init__(self, lifetime=LIFETIME, max_tickets=MAX_TICKETS,
                 per_caller=defaults.CONSOLE_TICKETS_PER_CALLER):
        """per_caller: tickets one caller may have outstanding, so that it cannot take them all."""
        self.lifetime, self.max_tickets, self.per_caller = lifetime, max_tickets, per_caller
        self._tickets = {}  # token -> Ticket
        # Spent tokens -> when they would have expired: hidden from the logs until then (a log
        # line may be written after its request spent one), at most max_tickets of them.
        self._spent = {}
        self._lock = threading.Lock()

    def issue(self, hypervisor, uuid, handler, role, caller, credential=None):
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
                                         now + self.lifetime, credential)
        return token

    def redeem(self, token):
        """The ticket a token names, taken out (it works once); None if unknown or expired."""
        with self._lock:
            ticket = self._tickets.pop(token, None)
            if ticket is not None:
                self._spent[token] = ticket.expires
                if len(self._spent) > self.max_tickets:
                    del self._spent[next(iter(self._spent))]  # the oldest
        if ticket is None or ticket.expires < time.monotonic():
            return None
        return ticket

    def spend_in(self, target):
        """Spend every outstanding ticket a request target carries, wherever and however it is
        spelled there (tokens_in): a ticket that was sent somewhere is never good again."""
        if self._tickets:
            for token in tokens_in(target):
                if token in self._tickets:
                    self.redeem(token)

    def hide(self, target):
        """target fit for a log: without a value of a parameter named ticket (redact_ticket), nor
        any ticket outstanding or spent within its lifetime, whatever its parameter's name."""
        return redact_ticket(target, self._known if self._tickets or self._spent else None)

    def _known(self, token):
        return token in self._tickets or token in self._spent

    def __len__(self):
        with self._lock:
            self._sweep(time.monotonic())
            return len(self._tickets)

    def _sweep(self, now):
        for token in [token for token, ticket in self._tickets.items() if ticket.expires < now]:
            del self._tickets[token]
        for token in [token for token, expires in self._spent.items() if expires < now]:
            del self._spent[token]
