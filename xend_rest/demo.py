"""The demo hypervisor: libvirt's in-memory test driver, loaded with a small Xen host."""
import os

DEMO_NODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo-node.xml')


def demo_uri():
    """A libvirt URI for a fresh in-memory copy of the demo node (the test driver wants a path)."""
    return 'test://' + DEMO_NODE
