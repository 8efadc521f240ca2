"""Console and screen sessions: a client's upgraded connection bridged to a guest's console (a
libvirt stream) or screen (VNC), the registry of an app's sessions, the WebSocket codec.
May import: the hypervisor layer and the neutral modules. Only the registry loads at start."""
