"""The handlers: one module per resource, each route a short function of the request and its path
parameters that answers (status, body[, headers]). They may import what the application may."""
