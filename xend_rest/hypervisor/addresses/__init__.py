"""Where a running guest is on the network: libvirt's address sources, dom0's neighbour table
(netlink) and the guest agents' xenstore keys. Part of the hypervisor layer: imports libvirt, the
standard library and the neutral modules."""
