"""Test-wide settings: the user's fastrobust folder (trust records, allow-list) is a temporary one, so
the tests neither read nor write the developer's own (subprocesses inherit it)."""

import atexit
import os
import shutil
import tempfile

os.environ["FASTROBUST_CONFIG_DIR"] = tempfile.mkdtemp(prefix="fastrobust-config-")
atexit.register(shutil.rmtree, os.environ["FASTROBUST_CONFIG_DIR"], ignore_errors=True)
os.environ.pop("FASTROBUST_TRUSTED_CODE", None)
