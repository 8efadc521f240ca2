"""Header values the app and the server both read: one parser each."""
from .errors import HTTPError, bad_request


def content_length(value):
    """A Content-Length header's value as a number: None when absent, 400 when not a length."""
    if value is None or value == '':
        return None
    if value.startswith('-') and value[1:].isascii() and value[1:].isdigit():
        raise bad_request('Content-Length is negative')
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise bad_request('Content-Length is not a number')
    return int(value)


def required_length(value):
    """A Content-Length a body must have: 411 when there is none."""
    length = content_length(value)
    if length is None:
        raise HTTPError(411, 'a body needs a Content-Length', 'length_required')
    return length


def media_type(value):
    """The media type of a Content-Type, without parameters, lowercased: '' when absent."""
    return (value or '').split(';')[0].strip().lower()
