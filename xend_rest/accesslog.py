"""The access log: one line per answered request, at INFO on `xend_rest.access`; and how any log
line writes what a client sent (printable, printable_text, traceback_text).

The serving worker writes its own line: few workers serve at once (server.py), so there is
little queueing on the handler's lock, and a thread of its own to write the lines cost more
(the GIL changing hands with it) than the writing itself.
"""
import logging
import re
import time
import traceback

log = logging.getLogger('xend_rest.access')

# A field is printable ASCII without spaces: anything else a client or a credential brings (a
# CR, a newline, an escape sequence, a space that would shift the fields) is percent-encoded.
UNPRINTABLE = re.compile(r'[^\x21-\x7e]')
UNPRINTABLE_TEXT = re.compile(r'[^\x20-\x7e]')  # free text keeps its spaces
REQUEST_LINE = 'latin-1'  # a request line's bytes, one character each (PEP 3333)
# Parts of a traceback (traceback.format_exception) that are Python's words or the code's:
# its head, the frames (indented), and between chained exceptions a line set off by blank ones.
# The rest are the exceptions' messages.
TRACEBACK_HEAD = 'Traceback (most recent call last):\n'


def request(method, target, status, nbytes, start, client, caller='-'):
    """Log one answered request; start: its time.perf_counter() when it began; target: as the
    app says it may be logged (it hides credentials there); caller: who the app says made it
    ('-': nobody it knows of)."""
    if log.isEnabledFor(logging.INFO):
        log.info('%s %s %s %d %.2fms %s %s', printable(method, REQUEST_LINE),
                 printable(target, REQUEST_LINE), status, nbytes,
                 (time.perf_counter() - start) * 1000, client, printable(caller))


def printable(text, encoding='utf-8'):
    """text as one log field: each character outside printable ASCII is percent-encoded, as
    its bytes in `encoding` (REQUEST_LINE for what came in a request line)."""
    return UNPRINTABLE.sub(lambda match: _percent(match.group(), encoding), text)


def printable_text(text, encoding='utf-8'):
    """Free text (a message that may quote a client: a name, a path, libvirt's words about
    them) for the rest of a log line: as printable(), but spaces stay."""
    return UNPRINTABLE_TEXT.sub(lambda match: _percent(match.group(), encoding), str(text))


def traceback_text(err):
    """err's traceback for a log record: the code it ran through as Python writes it, each
    exception's own message (which may quote a client) through printable_text."""
    chunks = traceback.format_exception(type(err), err, err.__traceback__)
    return ''.join(chunk if chunk.startswith(('  ', '\n')) or chunk == TRACEBACK_HEAD
                   else printable_text(chunk.rstrip('\n')) + '\n' for chunk in chunks).rstrip('\n')


def _percent(char, encoding):
    try:
        data = char.encode(encoding)
    except UnicodeEncodeError:
        data = char.encode('utf-8', 'surrogatepass')
    return ''.join(f'%{byte:02X}' for byte in data)
