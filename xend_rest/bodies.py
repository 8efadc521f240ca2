"""Answer bodies that are not JSON: plain bytes, or a stream sent as it is produced."""


class Raw:
    """Bytes (sent with a Content-Length) or an iterable of bytes (streamed) of a given type."""

    def __init__(self, content, content_type):
        self.content = content
        self.content_type = content_type

    @property
    def streamed(self):
        return not isinstance(self.content, bytes)
