"""Everything that talks to libvirt: connections opened, watched and reopened, its errors, XML <->
JSON, the per-domain memo, events, statistics, bounded calls, streams and uploads.
May import: libvirt, xmltodict and the neutral modules (errors, logtext, defaults)."""
