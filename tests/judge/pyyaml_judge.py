"""The judge of YAML meaning: reads texts the way cloud-init 22.4's
`util.load_yaml` does (PyYAML's pure-Python SafeLoader, with cloud-init's
`python/unicode` constructor) and prints, per case, the verdict as tagged
JSON.

Protocol: one JSON string (the YAML text) per input line; one JSON object per
output line, flushed at once:
  {"ok": true, "value": TAGGED}      cloud-init reads this configuration
  {"ok": false, "kind": KIND, "error": TEXT}
KIND is "refused" (an exception cloud-init catches: it ignores the file),
"crashes" (one it does not catch), or "unsupported" (PyYAML reads it into
something prepare-image does not hold: sets, bytes, pairs, recursive data,
integers beyond 128 bits, lone surrogates, Jinja templates).
"""

import datetime
import json
import re
import struct
import sys

import yaml


class Loader(yaml.SafeLoader):
    def construct_python_unicode(self, node):
        return super().construct_scalar(node)


Loader.add_constructor(
    "tag:yaml.org,2002:python/unicode", Loader.construct_python_unicode
)

# cloud-init's templater.TYPE_MATCHER, applied to the first line.
JINJA = re.compile(r"##\s*template:(.*)", re.I)


class Unsupported(Exception):
    pass


def tag(value, active):
    if id(value) in active:
        raise Unsupported("recursive")
    if value is None:
        return ["null"]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        if not -(2**127) <= value < 2**127:
            raise Unsupported("big int")
        return ["int", str(value)]
    if isinstance(value, float):
        if value != value:
            return ["float", "nan"]
        return ["float", struct.pack(">d", value).hex()]
    if isinstance(value, str):
        if any(0xD800 <= ord(c) < 0xE000 for c in value):
            raise Unsupported("surrogate")
        return ["str", value]
    if isinstance(value, datetime.datetime):
        return ["datetime", str(value)]
    if isinstance(value, datetime.date):
        return ["date", str(value)]
    if isinstance(value, list):
        active = active | {id(value)}
        if any(isinstance(item, tuple) for item in value):
            raise Unsupported("pairs")
        return ["seq", [tag(item, active) for item in value]]
    if isinstance(value, dict):
        active = active | {id(value)}
        entries = [[tag(k, active), tag(v, active)] for k, v in value.items()]
        entries.sort(key=lambda kv: json.dumps(kv[0]))
        return ["map", entries]
    raise Unsupported(type(value).__name__)


SCALAR_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("null", "bool", "int", "float", "str", "python/unicode", "timestamp")
}
UNSUPPORTED_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("set", "binary", "omap", "pairs")
}


def unsupported_node(loader, node, active, seen):
    """Why prepare-image does not hold this node graph (as the constructor
    left it: merge keys flattened), or None."""
    if id(node) in active:
        return "recursive"
    if id(node) in seen:
        return None
    seen.add(id(node))
    if node.tag in UNSUPPORTED_TAGS:
        return node.tag
    if isinstance(node, yaml.MappingNode) and node.tag in SCALAR_TAGS:
        return "a mapping read as a scalar"
    if isinstance(node, yaml.ScalarNode):
        if any(0xD800 <= ord(c) < 0xE000 for c in node.value):
            return "surrogate"
        if node.tag == "tag:yaml.org,2002:int":
            value = loader.construct_yaml_int(node)
            if not -(2**127) <= value < 2**127:
                return "big int"
        return None
    active = active | {id(node)}
    children = node.value
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    for child in children:
        why = unsupported_node(loader, child, active, seen)
        if why:
            return why
    return None


def judge(text):
    first = text.split("\n", 1)[0]
    m = JINJA.match(first)
    if m and m.group(1).lower().strip() == "jinja":
        return {"ok": False, "kind": "unsupported", "error": "jinja"}
    # yaml.load(text, Loader=Loader), in its two steps, so that the node
    # graph can be looked at after construction.
    loader = None
    try:
        loader = Loader(text)
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else None
    except (yaml.YAMLError, ValueError, TypeError) as e:
        return {"ok": False, "kind": "refused", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - what cloud-init does not catch
        return {"ok": False, "kind": "crashes", "error": repr(e)}
    finally:
        if loader is not None:
            loader.dispose()
    if value is None:
        # An empty document is an empty configuration. A document that is
        # only a null (`~`, an anchor or tag alone) is read as empty too: the
        # same effect as a file cloud-init ignores, which is how we report
        # it (there is no mapping to edit).
        if node is not None and node.start_mark.index != node.end_mark.index:
            return {"ok": False, "kind": "refused", "error": "a null document"}
        value = {}
    if not isinstance(value, dict):
        return {"ok": False, "kind": "refused", "error": "not a dict"}
    try:
        why = node is not None and unsupported_node(loader, node, frozenset(), set())
        if why:
            return {"ok": False, "kind": "unsupported", "error": why}
        return {"ok": True, "value": tag(value, frozenset())}
    except Unsupported as e:
        return {"ok": False, "kind": "unsupported", "error": str(e)}
    except RecursionError:
        return {"ok": False, "kind": "unsupported", "error": "too deep"}


def main():
    for line in sys.stdin:
        result = judge(json.loads(line))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
