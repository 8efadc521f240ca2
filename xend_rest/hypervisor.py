"""A hypervisor the daemon serves: its shared libvirt connection and what hangs off it."""
from .connection import PerConnection
from .events import EventHub
from .handlers.images import Uploads


class Hypervisor:
    """One named libvirt connection, with its own event hub, uploads and driver features."""

    def __init__(self, name, connection, events=None):
        self.name = name
        self.connection = connection  # a SharedConnection
        self.events = events or EventHub()
        self.uploads = Uploads()  # images being uploaded through this connection
        self.features = PerConnection()  # what the driver can do, probed once per connection
        connection.on_connect(self.events.attach)
