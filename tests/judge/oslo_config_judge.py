#!/usr/bin/python3
"""What oslo.config (Debian's python3-oslo.config) reads from a Cloudbase-Init
configuration file, for tests/cloudbase_differential.rs.

One JSON string per stdin line: the file's text. One JSON object per stdout
line: {"ok": true, "plugins": [...] | null, ...} (null: unset, the option's
default applies) or {"ok": false, "line": N, "message": "..."} when
oslo.config refuses the file (Cloudbase-Init then does not start).

The file is written to disk and read by ConfigOpts itself, so that Python's
own text-mode reading (universal newlines) is part of the verdict. The log
options are oslo.log's own (register_options), with their deprecated names
logfile/logdir, as Cloudbase-Init registers them.
"""
import json
import logging
import os
import re
import sys
import tempfile

from oslo_config import cfg
from oslo_log import log as oslo_log

# oslo.config's parse error messages (oslo_config/iniparser.py, cfg.py).
MESSAGES = [
    "No ':' or '=' found in assignment",
    "Key cannot be empty",
    "Unexpected continuation line",
    "Invalid section (must end with ])",
    "Empty section name",
    "Section must be started before assignment",
]


def verdict(path):
    conf = cfg.ConfigOpts()
    conf.register_opts([
        cfg.ListOpt("plugins", default=None),
        cfg.ListOpt("metadata_services", default=None),
        cfg.StrOpt("local_scripts_path", default=None),
    ])
    oslo_log.register_options(conf)
    try:
        conf(args=[], project="judge", default_config_files=[path],
             default_config_dirs=[])
    except cfg.ConfigFileParseError as e:
        m = re.match(r"at [^:]*:(\d+), ", e.msg)
        rest = e.msg[m.end():] if m else e.msg
        message = next((k for k in MESSAGES if rest.startswith(k)), rest)
        return {"ok": False, "line": int(m.group(1)) if m else None,
                "message": message}
    return {
        "ok": True,
        "plugins": conf.plugins,
        "metadata_services": conf.metadata_services,
        "local_scripts_path": conf.local_scripts_path,
        "log_file": conf.log_file,
        "log_dir": conf.log_dir,
    }


def main():
    # The deprecation notes for logfile/logdir would flood stderr.
    logging.getLogger("oslo_config").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cloudbase-init.conf")
        for line in sys.stdin:
            text = json.loads(line)
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            print(json.dumps(verdict(path)), flush=True)


main()
