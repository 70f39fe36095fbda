"""pytest plugin for running spandrel's test suite without internet access.

spandrel's tests download official model files on first use (tests/util.py, ``download_file``).
With this plugin such a test is reported as skipped, with the URL it needed, instead of failing
on the connection; every other test runs as usual. Use it from a spandrel checkout:

    PYTHONPATH=/path/to/HyReSR/contrib/spandrel python -m pytest tests -p offline_skip --snapshot-warn-unused

(``--snapshot-warn-unused``: the snapshots of the skipped tests are unused, which syrupy would
otherwise report as a failure.)
"""

import pytest


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    import tests.util as util

    def no_download(url, filename):
        pytest.skip(f"needs network (downloads {url})")

    monkeypatch.setattr(util, "download_file", no_download)
