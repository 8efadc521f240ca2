"""Where libvirt's domain and network schemas type a value as a host path (generated: do
not edit).

Read from libvirt 9.0.0's /usr/share/libvirt/schemas/domain.rng and network.rng by
tests/libvirt_schema.py; tests/test_schema_paths.py fails while the installed schemas
give another table. A place is the shortest tail of element names, then '@attribute'
or '#text', that only places of its kind end with: 'path' (a file, directory, device
or socket) or 'dbus' (a D-Bus address). The comment gives the first place it stands
for (under <domain>, or under the <network> it names) and how many more.
"""
SCHEMA_PATHS = {
    ('backend', '#text'): 'path',  # devices/rng/backend/#text
    ('char', '#text'): 'path',  # devices/hostdev/source/char/#text
    ('database', '#text'): 'path',  # devices/smartcard/database/#text
    ('dtb', '#text'): 'path',  # os/dtb/#text
    ('emulator', '#text'): 'path',  # devices/emulator/#text
    ('init', '#text'): 'path',  # os/init/#text
    ('initdir', '#text'): 'path',  # os/initdir/#text
    ('initrd', '#text'): 'path',  # os/initrd/#text
    ('kernel', '#text'): 'path',  # os/kernel/#text
    ('loader', '#text'): 'path',  # os/loader/#text
    ('nvram', '#text'): 'path',  # os/nvram/#text
    ('partition', '#text'): 'path',  # resource/partition/#text
    ('path', '#text'): 'path',  # blkiotune/device/path/#text (+1)
    ('root', '#text'): 'path',  # os/root/#text
    ('source', 'block', '#text'): 'path',  # devices/hostdev/source/block/#text
    ('table', '#text'): 'path',  # os/acpi/table/#text
    ('graphics', '@address'): 'dbus',  # devices/graphics/@address
    ('backingStore', 'source', '@dev'): 'path',  # devices/disk/backingStore/source/@dev (+1)
    ('disk', 'source', '@dev'): 'path',  # devices/disk/source/@dev
    ('filesystem', 'source', '@dev'): 'path',  # devices/filesystem/source/@dev
    ('input', '@dev'): 'path',  # devices/audio/input/@dev
    ('input', 'source', '@dev'): 'path',  # devices/input/source/@dev
    ('mirror', 'source', '@dev'): 'path',  # devices/disk/mirror/source/@dev
    ('nvram', 'source', '@dev'): 'path',  # os/nvram/source/@dev
    ('output', '@dev'): 'path',  # devices/audio/output/@dev
    ('source', '@dir'): 'path',  # devices/disk/backingStore/source/@dir (+5)
    ('source', '@evdev'): 'path',  # devices/input/source/@evdev
    ('bootp', '@file'): 'path',  # network/ip/dhcp/bootp/@file
    ('config', '@file'): 'path',  # devices/disk/backingStore/source/config/@file (+4)
    ('log', '@file'): 'path',  # devices/channel/log/@file (+6)
    ('mirror', '@file'): 'path',  # devices/disk/mirror/@file
    ('rom', '@file'): 'path',  # devices/hostdev/rom/@file (+1)
    ('source', '@file'): 'path',  # devices/disk/backingStore/source/@file (+5)
    ('backend', '@logFile'): 'path',  # devices/interface/backend/@logFile
    ('audio', '@path'): 'path',  # devices/audio/@path
    ('backingStore', 'source', '@path'): 'path',  # devices/disk/backingStore/source/@path (+1)
    ('binary', '@path'): 'path',  # devices/filesystem/binary/@path
    ('device', '@path'): 'path',  # devices/tpm/backend/device/@path
    ('disk', 'source', '@path'): 'path',  # devices/disk/source/@path
    ('downscript', '@path'): 'path',  # devices/interface/downscript/@path
    ('interface', 'source', '@path'): 'path',  # devices/interface/source/@path
    ('mirror', 'source', '@path'): 'path',  # devices/disk/mirror/source/@path
    ('nvram', 'source', '@path'): 'path',  # os/nvram/source/@path
    ('reservations', 'source', '@path'): 'path',  # devices/disk/backingStore/source/reservations/source/@path (+4)
    ('script', '@path'): 'path',  # devices/interface/script/@path
    ('server', '@path'): 'path',  # devices/shmem/server/@path
    ('tpm', 'backend', 'source', '@path'): 'path',  # devices/tpm/backend/source/@path
    ('acceleration', '@rendernode'): 'path',  # devices/video/model/acceleration/@rendernode
    ('gl', '@rendernode'): 'path',  # devices/graphics/gl/@rendernode
    ('graphics', '@socket'): 'path',  # devices/graphics/@socket
    ('host', '@socket'): 'path',  # devices/disk/backingStore/source/host/@socket (+4)
    ('listen', '@socket'): 'path',  # devices/graphics/listen/@socket
    ('source', '@socket'): 'path',  # devices/filesystem/source/@socket
    ('backend', '@tap'): 'path',  # devices/interface/backend/@tap
    ('nvram', '@template'): 'path',  # os/nvram/@template
    ('console', '@tty'): 'path',  # devices/console/@tty
    ('parallel', '@tty'): 'path',  # devices/parallel/@tty
    ('serial', '@tty'): 'path',  # devices/serial/@tty
    ('backend', '@vhost'): 'path',  # devices/interface/backend/@vhost
}
