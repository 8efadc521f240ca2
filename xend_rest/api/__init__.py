"""The WSGI application: make_app() and its one exception boundary, the route rows, the router,
the guard, query parameters and bodies, OpenAPI, and handlers/ (one module per resource).
May import: the hypervisor layer, the consoles (their sessions lazily), the neutral modules."""
