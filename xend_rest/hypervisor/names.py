"""What a hypervisor connection may be called. A name is a path segment, a metric label, a word
in the tokens file and part of an INI section's title: so it is kept plain."""
import re

DEFAULT = 'xen'  # the connection --uri names: the contract's paths are /libvirt/xen/...
PATTERN = re.compile(r'[a-z0-9][a-z0-9._-]{0,62}')
RULE = '1 to 63 lowercase letters, digits, ".", "_" or "-", starting with a letter or a digit'


def check(name):
    """The name, if it is a valid connection name; else ValueError saying the rule."""
    if not isinstance(name, str) or not PATTERN.fullmatch(name):
        raise ValueError(f'connection name {name!r}: expected {RULE}')
    return name
