"""Compatibility alias, kept for embedders: the documented path of Upgrade (environ
['xend_rest.upgrade']) before the package had subpackages. Its home is xend_rest.server.upgrades
(docs/layout.md)."""
from xend_rest.server.upgrades import Sessions, Upgrade  # noqa: F401 (re-exported)
