"""The docs against the repository and the code: every relative link resolves, and the API
reference lists exactly the routes the daemon serves."""
import os
import re
from pathlib import Path

import pytest

from xend_rest.api import routes

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
API = ROOT / 'docs' / 'api.md'

HEADING = re.compile(r' {0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
CODE_SPAN = re.compile(r'(`+)(.+?)\1')
ROUTE = re.compile(r'(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (/\S*)$')


def served_routes():
    """(method, path template) of every route as the docs write it, on the default connection:
    ('GET', '/libvirt/xen/nodes/{ident}/json')."""
    return {(route.method, route.path.replace('{connection}', 'xen')) for route in routes.ROUTES}


def prose_lines(path):
    """(line number, line) of a Markdown file, outside fenced code blocks."""
    fence = None
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        opening = re.match(r' {0,3}(`{3,}|~{3,})(.*)$', line)
        if fence is None:
            # "```GET /x```" on one line is a code span, not a fence: a backtick fence's info
            # string cannot hold a backtick.
            if opening and not (opening.group(1)[0] == '`' and '`' in opening.group(2)):
                fence = opening.group(1)
            else:
                yield number, line
        elif opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence) \
                and not opening.group(2).strip():
            fence = None


def slug(heading):
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda found: found.group(2), heading)
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)
    return re.sub(r'[^\w\- ]', '', text.strip().lower()).replace(' ', '-')


def anchors(path):
    """Every anchor of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen = {}
    for _number, line in prose_lines(path):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            yield base if count == 0 else '%s-%d' % (base, count)


def relative_links(path):
    """(line number, target) of every link in a Markdown file that is not a URL."""
    for number, line in prose_lines(path):
        for target in LINK.findall(CODE_SPAN.sub('', line)):
            if not re.match(r'[a-z][a-z0-9+.-]*:', target):
                yield number, target


def route_lines(path):
    """(line number, (method, path)) of every heading or table row that names a route:
    '#### GET /libvirt/xen/nodes/{ident}/json', or a row whose first cell is one."""
    for number, line in prose_lines(path):
        heading = HEADING.match(line)
        if heading:
            text = heading.group(2)
        elif line.lstrip().startswith('|'):
            text = line.strip().strip('|').split('|')[0]
        else:
            continue
        found = ROUTE.match(text.replace('`', '').strip())
        if found:
            yield number, (found.group(1), found.group(2))


@pytest.mark.parametrize('heading, expected', [
    ('Safe JSON -> XML', 'safe-json---xml'),
    ('Stop and Restart: wait', 'stop-and-restart-wait'),
    ('Attach, detach and update devices', 'attach-detach-and-update-devices'),
    ('`GET /_ping`', 'get-_ping'),
])
def test_slug_is_githubs(heading, expected):
    assert slug(heading) == expected


def test_docs_exist():
    assert API.exists()
    assert {'api.md', 'security.md', 'operations.md'} <= {doc.name for doc in DOCS}


def test_every_relative_link_resolves():
    broken = []
    for doc in DOCS:
        for number, target in relative_links(doc):
            file_part, _, anchor = target.partition('#')
            linked = (doc.parent / file_part).resolve() if file_part else doc
            where = '%s:%d: %s' % (doc.relative_to(ROOT), number, target)
            if not linked.exists():
                broken.append(where + ' (no such file)')
            elif anchor and (linked.suffix != '.md' or anchor not in set(anchors(linked))):
                broken.append(where + ' (no such anchor)')
    assert broken == []


def repository_files():
    """Every file of the checkout, without hidden directories (.git, .venv), caches and what
    an install generates (.gitignore: an egg-info keeps the README of its install)."""
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = sorted(name for name in subfolders
                               if not name.startswith('.') and name != '__pycache__'
                               and not name.endswith('.egg-info')
                               and (Path(folder) != ROOT or name not in ('build', 'dist')))
        for name in sorted(files):
            yield Path(folder, name)


def test_pointers_into_docs_resolve():
    """A comment or help text elsewhere (the example configuration, the unit, the code) that
    names docs/<file>.md, or docs/<file>.md#anchor, names a file and anchor that exist."""
    pointer = re.compile(r'docs/([\w.-]+\.md)(?:#([\w-]+))?')
    broken = []
    for path in repository_files():
        if path.suffix == '.md':
            continue  # the link test reads those
        try:
            text = path.read_text(encoding='utf-8')
        except (UnicodeDecodeError, OSError):
            continue
        for name, anchor in pointer.findall(text):
            target = ROOT / 'docs' / name
            if not target.exists() or (anchor and anchor not in set(anchors(target))):
                pointed = 'docs/%s%s' % (name, '#' + anchor if anchor else '')
                broken.append('%s: %s' % (path.relative_to(ROOT), pointed))
    assert broken == []


def test_api_reference_lists_every_route():
    documented = {route for _number, route in route_lines(API)}
    assert sorted(served_routes() - documented) == []


def test_every_route_in_the_docs_is_served():
    served = served_routes()
    unknown = []
    for doc in DOCS:
        for number, (method, path) in route_lines(doc):
            # HEAD is answered wherever GET is.
            if (method, path) not in served and not (method == 'HEAD' and ('GET', path) in served):
                unknown.append('%s:%d: %s %s' % (doc.relative_to(ROOT), number, method, path))
    assert unknown == []
