"""The HTTP/1.1 server: listeners and sd_notify, HTTP framing, the worker loop, the access log, and
the hand-over of an upgraded connection. It serves any WSGI app.
May import: the standard library and the neutral modules (errors, headers, logtext, defaults)."""
