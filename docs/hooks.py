"""MkDocs hook: the docstrings cross-reference in Sphinx style (:func:`name`); show those as code."""

import re

_ROLE = re.compile(r":(?:func|meth|class|mod|attr|data|exc|obj):(<code>)")


def on_page_content(html, **_):
    return _ROLE.sub(r"\1", html)
