"""The judge of the differential test: Debian's cloud-init 22.4.2 reading a
configuration tree exactly as it does at boot.

Run with Debian's /usr/bin/python3 (python3-yaml and the other modules
cloud-init imports) and the path printed by fetch-cloud-init.sh. Reads one
JSON request per line, {"root": DIR}, and answers one JSON line per request:
what `util.read_conf_with_confd("/etc/cloud/cloud.cfg")` returns inside DIR
(chroot, in a forked child, so absolute `conf_d` paths and symlinks resolve
inside DIR as they do in the image), tagged so that types survive JSON, and
how the modules read some settings from it. An exception cloud-init raises
is answered as {"error": ...}.
"""

import json
import logging
import os
import sys

sys.path.insert(0, sys.argv[1])

from cloudinit import net, util  # noqa: E402
# Imported before the chroot: read_conf and the mergers import these lazily.
from cloudinit.handlers import jinja_template  # noqa: E402,F401
from cloudinit.mergers import m_dict, m_list, m_str  # noqa: E402,F401
# One encoding of Python values for both judges (this script's directory is
# on sys.path: Python puts it there).
from pyyaml_judge import tag  # noqa: E402


class Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.ignored = 0

    def emit(self, record):
        if record.getMessage().startswith("Failed loading yaml blob"):
            self.ignored += 1


def evaluate():
    counter = Count()
    logging.getLogger("cloudinit.util").addHandler(counter)
    cfg = util.read_conf_with_confd("/etc/cloud/cloud.cfg")
    hosts = util.get_cfg_option_str(cfg, "manage_etc_hosts", False)
    return {
        "effective": tag(cfg, frozenset()),
        "ignored_reads": counter.ignored,
        "preserve_hostname": util.get_cfg_option_bool(
            cfg, "preserve_hostname", False
        ),
        "manage_etc_hosts": bool(
            util.translate_bool(hosts, addons=["template"])
            or hosts == "localhost"
        ),
        "network_disabled": bool(net.is_disabled_cfg(cfg.get("network"))),
    }


def judge(root):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            os.chroot(root)
            os.chdir("/")
            answer = evaluate()
        except BaseException as e:  # cloud-init fails: say how
            answer = {"error": "%s: %s" % (type(e).__name__, e)}
        data = json.dumps(answer).encode()
        with os.fdopen(write_end, "wb") as out:
            out.write(data)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    return data.decode()


def main():
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.write(judge(request["root"]) + "\n")
        sys.stdout.flush()


main()
