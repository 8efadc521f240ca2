"""Strict JSON for request bodies: what json.loads tolerates but a domain definition never needs is 400."""
import json
import math

from xend_rest.errors import bad_request

MAX_DEPTH = 64  # libvirt's deepest domain XML is about a dozen levels
MAX_INT_DIGITS = 20
MAX_INT = 2 ** 63
MAX_NUMBER = MAX_INT  # no definition needs a number beyond: refused however it is written


def loads(body):
    """The parsed body; NaN/Infinity, duplicate keys, deep nesting and huge numbers are refused."""
    try:
        doc = json.loads(body, parse_constant=_refuse_constant, parse_int=_bounded_int,
                         parse_float=_finite_float, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise bad_request(f'the body nests deeper than {MAX_DEPTH} levels') from None
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f'the body is not valid JSON: {err}') from None
    if _depth(doc) > MAX_DEPTH:
        raise bad_request(f'the body nests deeper than {MAX_DEPTH} levels')
    return doc


class _Refused(ValueError):
    """Raised from inside the parser; its message reaches the client as is."""


def _refuse_constant(name):
    raise _Refused(f'{name} is not a number JSON allows')


def _bounded_int(text):
    # Count digits before converting: int() of a huge literal is itself slow.
    if len(text.lstrip('-')) > MAX_INT_DIGITS or abs(int(text)) > MAX_NUMBER:
        raise _Refused(f'integer {text[:MAX_INT_DIGITS]}... is too large')
    return int(text)


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value) or abs(value) > MAX_NUMBER:
        raise _Refused(f'number {text[:MAX_INT_DIGITS]}... is too large')
    return value


def _unique_keys(pairs):
    doc = {}
    for key, value in pairs:
        if key in doc:
            raise _Refused(f'key "{key}" is given twice')
        doc[key] = value
    return doc


def _depth(doc):
    """How deeply containers nest (a scalar is 0), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in value)
    return deepest
