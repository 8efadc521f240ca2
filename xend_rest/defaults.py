"""Every default and media type the daemon shares between modules, in one place."""

# The hypervisor
DEFAULT_URI = 'xen:///system'  # unless --uri or $XEND_REST_URI says otherwise
URI_VARIABLE = 'XEND_REST_URI'
KEEPALIVE_INTERVAL = 5  # seconds of silence before libvirt pings libvirtd
KEEPALIVE_COUNT = 3  # unanswered pings before the connection counts as broken
OPEN_TIMEOUT = 30.0  # seconds an opening connection may take before requests get 504
# Connections to one libvirtd at most: each makes one call at a time (libvirt_connection.Gated), so a
# slow call (a start, an image copied or wiped) holds up only the requests on its own.
LANES = 4
# Seconds a listing of every connection (GET /libvirt/json, /version) waits for those being
# opened, and a scrape (/metrics) for each connection's counters: a dead one costs no more.
LISTING_WAIT = 1.0
SCRAPE_WAIT = 8.0  # below Prometheus' default scrape timeout (10 s)

# Where what must outlive the process is kept: an upload's marker (hypervisor/uploads.py), so that an image
# the daemon's death cut off is known as incomplete after a restart. The unit's StateDirectory=.
STATE_DIR = '/var/lib/xend-rest'

# The server
DEFAULT_LISTEN = ('127.0.0.1:8000',)
WORKERS = 32  # threads at most: `concurrency` serve at once, the others for stalled requests
# Workers serving at once while none stalls (--concurrency; docs/server.md has the figures). A
# request to the test driver, in our process, computes: one worker, as more cost more in GIL
# hand-offs than they bring. Through libvirtd (xen:///system, any remote URI) it mostly waits.
CONCURRENCY_IN_PROCESS = 1
CONCURRENCY_THROUGH_LIBVIRTD = 4
# Seconds a worker may spend on one request before another worker takes over serving the rest
# (a slow libvirt call, an event stream, a client that does not read its answer).
STALL = 0.02
TIMEOUT = 30.0  # seconds a read or write on a client socket may take
KEEPALIVE_TIMEOUT = 15.0  # seconds an idle keep-alive connection is kept
REQUEST_TIMEOUT = 60.0  # seconds a whole request body of up to MAX_BODY may take
# Request bodies larger than MAX_BODY (image uploads) read at once: the app reads them while it
# runs, so each holds a worker for as long as its client sends it; past it, 503. With event
# streams and waits, at most WORKERS minus the concurrency (serving.Holds).
MAX_UPLOADS = 4
# Bytes of answers that may wait, together, for clients that take them slowly (a worker never
# waits for them); past it, one more such client is cut off. Memory, not threads.
MAX_PARKED = 64 << 20
# Bytes of request bodies (of up to MAX_BODY each, by their Content-Length) that may be on
# their way at once, kept until they are complete; past it, one more is refused (503).
MAX_BUFFERED = 64 << 20
GRACE = 10.0  # seconds requests in flight get at shutdown
MAX_HEAD = 65536  # bytes of request line and header fields
BACKLOG = 1024
SOCKET_MODE = 0o660

# Requests
MAX_BODY = 1 << 20  # a JSON body: a domain definition is a few KiB; 1 MiB is generous
MAX_WAIT_SECONDS = 600  # a wait holds a server worker: bounded
# Event streams and waits open at once on all connections together (past it 503), and those one
# caller may hold (past it 429): a reader cannot take every place and lock an operator out. Each
# holds a worker: the server keeps them, with uploads, below WORKERS (serving.Holds).
WATCHERS = 16
WATCHERS_PER_CALLER = 8
# How long Stop and Restart wait for libvirt to pass the request on to the guest (about 1-2 s
# on Xen under emulation; libxl can block 60 s in a race with the guest's own power-off).
GUEST_REQUEST_SECONDS = 10.0
# Operations (long actions: Stop and Restart past that bound, migrations) run on threads of
# their own, at most OPERATION_THREADS at once (one more is 503); the finished ones are kept in
# memory, OPERATIONS_KEPT at most, for OPERATION_AGE seconds.
OPERATION_THREADS = 8
OPERATIONS_KEPT = 256
OPERATION_AGE = 3600.0

# Media types
JSON = 'application/json'
OCTETS = 'application/octet-stream'
NDJSON = 'application/x-ndjson'
SSE = 'text/event-stream'
TEXT = 'text/plain; charset=utf-8'
METRICS = 'text/plain; version=0.0.4; charset=utf-8'

# Consoles
CONSOLE_SESSIONS = 16  # console and screen sessions open at once; past it 429
CONSOLE_SESSIONS_PER_CALLER = 8  # of them, those one caller may hold; past it 429 too
# Console tickets one caller may have outstanding (each lives 30 s, of 1024 in all); past it 429.
CONSOLE_TICKETS_PER_CALLER = 64
CONSOLE_IDLE = 3600.0  # seconds without input or output before a session is closed
CONSOLE_BUFFER = 1 << 20  # bytes waiting each way; a client that lets more pile up is cut off
CONSOLE_MESSAGE = 1 << 20  # bytes of one WebSocket message, fragments included: larger closes with 1009
CONSOLE_CLOSE_WAIT = 5.0  # seconds a client gets to take the last bytes and answer our close frame
