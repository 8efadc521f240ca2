"""The real-hypervisor tier: a real libvirtd (QEMU driver, software emulation) and a tiny guest."""
