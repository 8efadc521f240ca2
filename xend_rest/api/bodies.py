"""Answer bodies that are not JSON: plain bytes, or a stream sent as it is produced."""


class Raw:
    """Bytes, or an iterable of bytes streamed as it is produced, of a given type.

    An iterable's close() (called by the WSGI server, or at once for HEAD) releases what it reads
    from; its length, when known in advance, becomes the Content-Length.
    """

    def __init__(self, content, content_type, length=None):
        self.content = content
        self.content_type = content_type
        self.length = len(content) if isinstance(content, bytes) else length

    @property
    def streamed(self):
        return not isinstance(self.content, bytes)
