"""The HTTP error every layer raises, and how a JSON error is written: no libvirt here (its errors
are mapped in hypervisor/libvirt_errors.py), so the server can import it."""
import json

RETRY_AFTER = '5'  # seconds, in the Retry-After of an answer that asks the client to come back


class HTTPError(Exception):
    """An error answer: a status, a JSON body {"message", "code"} and extra headers."""

    logged = False  # its cause is in the log already: the app does not log the answer again

    def __init__(self, status, message, code, headers=()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = list(headers)

    def body(self):
        return {'message': self.message, 'code': self.code}

    def payload(self):
        """The body as sent: the one way a JSON error is written, by the app and the server."""
        return json_payload(self.body())


def json_payload(body):
    """A JSON answer's bytes: keys sorted, one line."""
    return json.dumps(body, sort_keys=True).encode() + b'\n'


def bad_request(message):
    return HTTPError(400, message, 'bad_parameter')


def wait_timeout(message):
    """A wait the client bounded ran out: 408, since nothing upstream failed (504 says it did)."""
    return HTTPError(408, message, 'wait_timeout')


def client_gone(message):
    """A request given up because its client hung up while it waited: nobody reads the answer,
    which is for the access log (499, as nginx logs a client that closed its request)."""
    return HTTPError(499, message, 'client_gone')
