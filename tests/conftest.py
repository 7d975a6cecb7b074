"""Test-wide settings: the user's fastrobust folder (trust records, allow-list) is a temporary one, so
the tests neither read nor write the developer's own (subprocesses inherit it)."""

import os
import tempfile

os.environ["FASTROBUST_CONFIG_DIR"] = tempfile.mkdtemp(prefix="fastrobust-config-")
os.environ.pop("FASTROBUST_TRUSTED_CODE", None)
