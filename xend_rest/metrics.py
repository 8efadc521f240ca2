"""The daemon's own request metrics, and Prometheus' text exposition format (version 0.0.4)."""
import bisect
import threading

# Seconds; an API call on a local hypervisor takes about a millisecond, a wait up to minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600)


class RequestMetrics:
    """Request counts and a latency histogram per (route, status); one per app."""

    def __init__(self):
        self._lock = threading.Lock()
        self._series = {}  # (route, status) -> [count per bucket..., +Inf count, sum of seconds]
        self._connections = {}  # route -> the connection its requests act on (None: daemon-wide)

    def observe(self, route, status, seconds, connection=None):
        """Count one answered request (on every request's path: keep it cheap)."""
        bucket = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            series = self._series.get((route, status))
            if series is None:
                series = self._series[route, status] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
                self._connections[route] = connection
            series[bucket] += 1
            series[-1] += seconds

    def samples(self, connections=None):
        """(route, status, cumulative bucket counts, count, sum) for each series, sorted; with
        `connections`, only the daemon-wide routes' and those of routes on these connections."""
        with self._lock:
            snapshot = {key: list(series) for key, series in self._series.items()
                        if connections is None or self._connections[key[0]] in (None, *connections)}
        for (route, status), series in sorted(snapshot.items()):
            cumulative, running = [], 0
            for count in series[:-1]:
                running += count
                cumulative.append(running)
            yield route, status, cumulative, running, series[-1]


def escape(value):
    """A label value as the exposition format wants it: backslash, quote and newline escaped."""
    text = str(value)
    if '\\' in text or '"' in text or '\n' in text:  # seldom: testing is cheaper than replacing
        text = text.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')
    return text


def labels(**pairs):
    text = ','.join([f'{name}="{escape(value)}"' for name, value in pairs.items()])
    return f'{{{text}}}'


class Exposition:
    """Builds the text of a scrape: each metric family once, with its HELP and TYPE lines."""

    def __init__(self):
        self._families = {}  # name -> (help, type, [lines or blocks of them]), in order

    def add(self, name, kind, help_text, value, label_text='', suffix=''):
        family = self._families.setdefault(name, (help_text, kind, []))
        family[2].append(f'{name}{suffix}{label_text} {_number(value)}')

    def add_many(self, name, kind, help_text, values, label_texts):
        """Samples of one family at once: values and their label texts, in step; None values are
        left out. A scrape of thousands of domains is mostly this loop: one f-string a line, an
        int (most samples) written as it is. The lines are joined at once: the memory they took
        is reused by the next family's (at 10,000 domains, keeping every line until text()
        took some 7,000 fresh pages, a tenth of the scrape's time)."""
        blocks = self._families.setdefault(name, (help_text, kind, []))[2]
        lines = [f'{name}{label_text} {value if type(value) is int else _number(value)}'
                 for value, label_text in zip(values, label_texts) if value is not None]
        if lines:  # a family without samples has its HELP and TYPE all the same
            blocks.append('\n'.join(lines))

    def text(self):
        out = []
        for name, (help_text, kind, lines) in self._families.items():
            escaped = help_text.replace('\\', '\\\\').replace('\n', '\\n')
            out.append(f'# HELP {name} {escaped}')
            out.append(f'# TYPE {name} {kind}')
            out.extend(lines)
        out.append('')  # the last line's end, without copying the whole text once more
        return '\n'.join(out)


def _number(value):
    return repr(value) if isinstance(value, float) else str(int(value))  # counters are finite


def add_requests(exposition, metrics, connections=None):
    """The request counter and latency histogram into an exposition (from one snapshot); with
    `connections`, of the daemon-wide routes and of the routes on these connections only."""
    samples = list(metrics.samples(connections))
    for route, status, cumulative, count, total in samples:
        exposition.add('xend_http_requests_total', 'counter',
                       'HTTP requests answered, by route pattern and status.',
                       count, labels(route=route, status=status))
    for route, status, cumulative, count, total in samples:
        name = 'xend_http_request_duration_seconds'
        help_text = 'Time from receiving a request to having its answer (a stream: its start).'
        for bound, running in zip(LATENCY_BUCKETS + ('+Inf',), cumulative):
            exposition.add(name, 'histogram', help_text, running,
                           labels(route=route, status=status, le=bound), '_bucket')
        exposition.add(name, 'histogram', help_text, total, labels(route=route, status=status), '_sum')
        exposition.add(name, 'histogram', help_text, count, labels(route=route, status=status),
                       '_count')
