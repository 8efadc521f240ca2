"""Compatibility alias, kept for embedders: the documented path of SharedConnection before the
package had subpackages. Its home is xend_rest.hypervisor.libvirt_connection (docs/layout.md)."""
from xend_rest.hypervisor.libvirt_connection import (  # noqa: F401 (re-exported)
    LibvirtSettings, SharedConnection, start_event_loop)
